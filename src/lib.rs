//! safepoint-gateway: lets legacy ITSM tools (XML, SOAP) and internal services (gRPC)
//! order Loomis SafePoint service, and turns Loomis callbacks back into their updates.
#![forbid(unsafe_code)]

pub mod config;
pub mod delivery;
pub mod gateway;
pub mod incident;
pub mod loomis;
pub mod mapping;
pub mod store;
pub mod http;
