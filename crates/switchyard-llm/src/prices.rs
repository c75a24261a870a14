//! The price table. (Interface to come.)
