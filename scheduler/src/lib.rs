//! tern-scheduler: placement, prediction, rebalancing and simulation (being written).
