//! OTLP/HTTP trace export requests. (Interface to come.)
