//! `shunt-proto`: the I/O-free core every shunt component shares.
//!
//! - [`names`]: the exact labels, annotations, env vars and defaults of ARCHITECTURE.md;
//! - [`filter`]: the HTTP filter language (parse, match, exact overlap with a witness);
//! - [`route`]: the route model that the routes file and the operator both speak.
//!
//! Nothing here opens a socket or a file: callers hand in bytes and get values back.

pub mod filter;
pub mod names;
pub mod route;

pub use filter::{Filter, FilterError, Witness};
pub use route::{Mode, Route, RouteError, RouteSet};
