//! Tests of the public mapping interface.

