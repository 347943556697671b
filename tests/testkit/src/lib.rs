//! Test kit for pipedream-secrets-operator: a Kubernetes API emulator and a fake Pipedream, both usable in-process
//! from tests and as standalone binaries (`kube-emulator`, `fake-pipedream`).

pub mod apiserver;
pub mod controlplane;
pub mod faultproxy;
pub mod pipedream;
