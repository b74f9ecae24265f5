//! The Loomis SafePoint side: protocol messages, the HTTP client that sends them, the
//! callback route that receives them, and a built-in simulator that plays Loomis.

pub mod callback;
pub mod message;
pub mod simulator;
