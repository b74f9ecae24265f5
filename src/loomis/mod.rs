//! The Loomis SafePoint protocol: the messages as the vendor's spec names them, and the
//! rules that make one valid. Wire types and validation only: the HTTP client that sends
//! them is [`crate::client`], the callback route that receives them is
//! [`crate::edge::http::callback`], and the built-in Loomis is [`crate::simulator`].

pub mod message;
