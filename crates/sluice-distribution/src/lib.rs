//! sluice-distribution
