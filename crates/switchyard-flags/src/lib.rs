//! Feature flags, PostHog-identical: definitions in PostHog's JSON, compiled once into a
//! [`FlagSet`], evaluated per person and group. Pure: no I/O, no clock reads (the caller passes
//! `now`), so every rule is testable as a plain function.

pub mod definition;
pub mod eval;
pub mod hash;
pub mod property;

pub use definition::{Condition, FlagDefinition, FlagFilters, Multivariate, PropertyFilter, Variant};
pub use eval::{
    Context, EvalError, Evaluation, FlagSet, FlagValue, Problem, Reason, Subject, MAX_DEPENDENCY_DEPTH, MAX_EVAL_DEPTH, MAX_PROPERTY_GROUP_DEPTH,
};

/// A definition that cannot be evaluated, naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(pub String);

impl FlagError {
    pub fn invalid(message: impl Into<String>) -> Self {
        FlagError(message.into())
    }
}
