//! Sluice distribution: the HTTP side. Each distribution is an independently
//! configured view of one channel's engines; requests are decoded into typed
//! routes ([`path`]) and answered from the engines' in-memory stores.
//!
//! Later issues add policy here (tokens, geo, IP, origins, overrides), applied
//! on the multivariant request; the [`Catalog`] is swapped atomically so a
//! change never shows a request half of it.

pub mod analytics;
mod deadline;
pub mod geo;
#[cfg(test)]
mod ll_tests;
pub mod overrides;
pub mod path;
pub mod policy;
mod server;
pub mod session;

pub use analytics::{Audience, Viewers};
pub use geo::{GeoDb, GeoDbError};
pub use policy::{Geo, Policy, Refusal, SignError, sign_token};
pub use server::{
    API_MAX_BODY, AngleSlot, Answer, ApiFuture, ApiRequest, Catalog, ControlApi, Directives,
    DistributionCounts, DistributionEntry, HttpLimits, HttpState, Parked, REQUEST_KINDS,
    RefusalCounts, RequestCounts, RequestFacts, STATUS_CLASSES, handle, plan,
    serve_http_connection, unused_counts,
};
pub use session::SessionKey;
