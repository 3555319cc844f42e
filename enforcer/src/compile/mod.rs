//! Compiles a policy and its identities into the desired state of the kernel maps. Pure.
