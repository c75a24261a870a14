//! What a response means for delivery, and when to try again.
