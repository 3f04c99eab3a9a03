//! Kinds of senders. Each turns what its property-management system sends into lease facts
//! lease-sync folds into resident state. `lease-sync` (the default kind: lease-sync's own
//! event v1, handled by [`crate::event`]) and [`buildium`].

pub mod buildium;
