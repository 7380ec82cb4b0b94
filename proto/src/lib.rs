//! `shunt-proto`: the I/O-free core every shunt component shares.
//!
//! - [`names`]: the exact labels, annotations, env vars and defaults of ARCHITECTURE.md;
//! - [`filter`]: the HTTP filter language (parse, match, exact overlap with a witness);
//! - [`route`]: the route model that the routes file and the operator both speak;
//! - [`hub`]: the sidecar ↔ operator protocol (paths, headers, roles);
//! - [`session`]: sessions of the aggregated API and target references;
//! - [`policy`]: the policy CRDs (`policy.shunt.dev`), their static checks and globs.
//!
//! Nothing here opens a socket or a file: callers hand in bytes and get values back.

pub mod filter;
pub mod hub;
pub mod names;
pub mod policy;
pub mod route;
pub mod session;

pub use filter::{Filter, FilterError, Witness};
pub use route::{Mode, Route, RouteError, RouteSet, Upstream};
pub use session::{SessionSpec, SessionStatus, TargetKind, TargetRef};
