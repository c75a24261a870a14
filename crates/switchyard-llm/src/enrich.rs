//! PostHog's server-side steps for `$ai_*` events. (Interface to come.)
