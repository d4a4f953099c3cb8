//! sluice-package
