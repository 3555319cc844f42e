//! The only aya user: loads and attaches the kernel programs, syncs maps with the desired state.
