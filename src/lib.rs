//! safepoint-gateway lets legacy ITSM tools (XML, SOAP) and internal services (gRPC)
//! order Loomis SafePoint service, and turns Loomis callbacks back into their updates.
//!
//! Reading order: [`loomis::message`] (the vendor protocol), [`incident`] (the domain and
//! its state machine), [`store`] (durable state, group commit), [`gateway`] (the core
//! API every front door calls), [`delivery`] (the retry engine), [`mapping`] (the
//! integration engineers' mapping files), the front doors [`legacy`] and `grpc`, the
//! Loomis [`loomis::callback`] route, and [`app`] which wires it all together.
#![forbid(unsafe_code)]

pub mod app;
pub mod attempts;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod delivery;
pub mod edge;
pub mod gateway;
pub mod incident;
pub mod intake;
pub mod live;
pub mod loomis;
pub mod mapping;
pub mod operator;
pub mod ops_metrics;
pub mod retention;
pub mod simulator;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod trace;
