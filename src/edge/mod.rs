//! The gateway's listeners: everything that faces a caller. [`http`] serves Loomis
//! callbacks, health, metrics and the operators' routes and mounts [`legacy`], the XML
//! and SOAP front door, and [`console`], the operators' web console; [`grpc`] is the internal services' front door. Only the edges
//! choose HTTP status codes and gRPC codes; each has one error type that the core's
//! typed errors are mapped to, once.

pub mod console;
pub mod grpc;
pub mod http;
pub mod legacy;
pub mod listen;
pub mod refusal;
pub mod traced;
