//! tern-control: the control plane (being written).
