//! Certificates for the test kit's TLS servers: a CA of their own and a serving certificate it signs.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A new CA named `ca_name` (its PEM) and a serving certificate for `names`, common name `common_name`, with its
/// key.
pub(crate) fn ca_and_serving(
    ca_name: &str,
    common_name: &str,
    names: &[&str],
) -> Result<(String, Certificate, KeyPair), String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut serving =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .map_err(err)?;
    serving
        .distinguished_name
        .push(DnType::CommonName, common_name);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = serving.signed_by(&key, &issuer).map_err(err)?;
    Ok((ca_cert.pem(), cert, key))
}
