//! Test kit for pipedream-secrets-operator: a real control plane (with hollow nodes), a Kubernetes API emulator and a
//! fake Pipedream, usable in-process from tests and as standalone binaries (`control-plane`, `kube-emulator`,
//! `fake-pipedream`), and a monitor of what pods read ([`podview`]).

pub mod apiserver;
mod certs;
pub mod controlplane;
pub mod egressproxy;
pub mod faultproxy;
pub mod pipedream;
pub mod podview;
