//! The mapping engine: compiles integration mapping files into plans and applies them.
