//! The integration tests: one binary (fast to link), one module per area.
//!
//! - `validate`: every invalid fixture renders the diagnostics in its snapshot
//!   and contains the code its first line expects; valid fixtures and shipped
//!   workflows load; hostile inputs fail fast; the JSON Schema agrees.
//! - `engine`: runs on the scripted backend: order, concurrency, loops and
//!   each stop rule, budgets with exact token accounting, cancellation,
//!   best-so-far, structured output repair, failures.
//! - `cli`: the binary's exit codes, stdout, stderr and event log.

mod answers;
mod architecture;
mod bridge;
mod cache;
mod cli;
mod engine;
mod eval;
mod guarded;
mod library;
#[cfg(feature = "llama")]
mod llama;
mod methods;
mod methods_real;
mod migrations;
#[cfg(feature = "llama")]
mod mock_hub;
mod mock_openai;
mod openai;
#[cfg(feature = "otel")]
mod otel;
mod real_server;
mod sandbox;
mod store;
mod support;
mod validate;
mod view;
