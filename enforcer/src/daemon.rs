//! The daemon: wires policy, identities, datapath and events together.
