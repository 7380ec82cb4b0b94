//! `shunt-operator`: holds the sessions of developers and gives every pod of a target the
//! routes of the sessions on it.
//!
//! - [`run`] ([`app`]) wires everything; [`config`] its flags; [`cli_main`] the process
//!   (logging, runtime, signals); [`leader`] the Lease election;
//! - [`api`]: the aggregated API server of `api.shunt.dev/v1` (sessions, targets, tunnels);
//! - [`targets`]: workloads a session can target, their selectors and pods;
//! - [`lifecycle`]: session status, grace-period expiry and Events;
//! - [`policy`]: the `policy.shunt.dev` policies: status, enforcement, `policyreviews`;
//! - [`registry`]: sessions, conflict checks, the routes each pod must have;
//! - [`hub`]: the TLS endpoint sidecars dial for their routes and to relay requests;
//! - [`outbound`]: `shunt exec`'s outbound tunnel, relayed over sidecars' reverse connections;
//! - [`tls_secret`]: the serving certificate of both from a watched Secret (`--tls-secret`);
//! - [`tunnel`]: per session, the CLI's HTTP/2 connection that serves stolen requests.

pub mod api;
pub mod app;
pub mod cli_main;
pub mod config;
pub mod hub;
pub mod leader;
pub mod lifecycle;
pub mod outbound;
pub mod policy;
pub mod registry;
pub mod targets;
pub mod tls_secret;
pub mod tunnel;

pub use app::{run, run_with, Listeners};
