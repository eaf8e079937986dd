//! Signing keys' configuration: the key-encryption key, the default signing key, and
//! named signing profiles (for instance an RS256 key for the clouds).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_PROFILE, KekSource, KeySpec, RsaBits, SigningAlg, SigningProfile};

/// Signing-key settings. In the file: `kek_file` or `kek_env` (exactly one), `algorithm`,
/// `rsa_bits`, `rotation_lead`, and `[[keys.profiles]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "KeysFile")]
pub struct KeysConfig {
    /// Where the key-encryption key comes from; `None` until configured (start-up refuses).
    pub kek: Option<KekSource>,
    /// The default profile's key: `EdDSA` (Ed25519, the default), `ES256` or `RS256`.
    pub algorithm: KeySpec,
    /// How long a rotated default key is published before it signs.
    pub rotation_lead: Duration,
    /// Named profiles beside the default one.
    pub profiles: Vec<SigningProfileConfig>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { kek: None, algorithm: KeySpec::EdDsa, rotation_lead: Duration::ZERO, profiles: Vec::new() }
    }
}

/// A named signing profile and the audiences it signs access tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningProfileConfig {
    /// Its name (`[a-z0-9_-]`, not `default`).
    pub name: String,
    /// Algorithm and key size.
    pub spec: KeySpec,
    /// How long a rotated key is published before it signs.
    pub rotation_lead: Duration,
    /// Access tokens for these audiences are signed with this profile's key.
    pub audiences: Vec<String>,
}

impl KeysConfig {
    /// Every profile, the default one first, as the key ring takes them.
    pub fn signing_profiles(&self) -> Vec<SigningProfile> {
        let lead = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        std::iter::once(SigningProfile {
            name: DEFAULT_PROFILE.into(),
            spec: self.algorithm,
            lead_secs: lead(self.rotation_lead),
        })
        .chain(self.profiles.iter().map(|p| SigningProfile {
            name: p.name.clone(),
            spec: p.spec,
            lead_secs: lead(p.rotation_lead),
        }))
        .collect()
    }

    /// The profile that signs access tokens for `audience`, when one claims it.
    pub fn profile_for_audience(&self, audience: &str) -> Option<&SigningProfileConfig> {
        self.profiles.iter().find(|p| p.audiences.iter().any(|a| a == audience))
    }

    /// A named profile.
    pub fn profile(&self, name: &str) -> Option<&SigningProfileConfig> {
        self.profiles.iter().find(|p| p.name == name)
    }
}

/// `[keys]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    /// File holding the 32-byte key-encryption key (64 hex characters or raw bytes).
    #[serde(default)]
    kek_file: Option<PathBuf>,
    /// Environment variable holding the key-encryption key as 64 hex characters.
    #[serde(default)]
    kek_env: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    rsa_bits: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    rotation_lead: Option<Duration>,
    #[serde(default)]
    profiles: Vec<ProfileFile>,
}

/// `[[keys.profiles]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    algorithm: String,
    #[serde(default)]
    rsa_bits: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    rotation_lead: Option<Duration>,
    #[serde(default)]
    audiences: Vec<String>,
}

/// A key spec from `algorithm` and `rsa_bits`; `what` names the setting in messages.
fn key_spec(what: &str, algorithm: &str, rsa_bits: Option<u32>) -> Result<KeySpec, String> {
    let alg = SigningAlg::parse(algorithm)
        .ok_or_else(|| format!("{what}.algorithm {algorithm:?}: use EdDSA, ES256 or RS256"))?;
    match (alg, rsa_bits) {
        (SigningAlg::Rs256, None) => Ok(KeySpec::Rs256(RsaBits::default())),
        (SigningAlg::Rs256, Some(bits)) => RsaBits::from_bits(bits)
            .map(KeySpec::Rs256)
            .ok_or_else(|| format!("{what}.rsa_bits {bits}: use 2048 or 3072")),
        (_, Some(_)) => Err(format!("{what}.rsa_bits is only for algorithm = \"RS256\"")),
        (alg, None) => Ok(alg.into()),
    }
}

/// One rotation lead is enough for any verifier: a day.
const MAX_ROTATION_LEAD: Duration = Duration::from_secs(86_400);

fn lead(what: &str, d: Option<Duration>, default: Duration) -> Result<Duration, String> {
    let d = d.unwrap_or(default);
    if d > MAX_ROTATION_LEAD {
        return Err(format!("{what}.rotation_lead is at most 24h"));
    }
    Ok(d)
}

impl TryFrom<KeysFile> for KeysConfig {
    type Error = String;

    fn try_from(f: KeysFile) -> Result<Self, String> {
        let kek = match (f.kek_file, f.kek_env) {
            (Some(_), Some(_)) => return Err("keys: set one of kek_file and kek_env, not both".into()),
            (Some(path), None) => Some(KekSource::File(path)),
            (None, Some(var)) => Some(KekSource::Env(var)),
            (None, None) => None,
        };
        let algorithm = key_spec("keys", f.algorithm.as_deref().unwrap_or("EdDSA"), f.rsa_bits)?;
        let rotation_lead = lead("keys", f.rotation_lead, Duration::ZERO)?;
        let mut profiles: Vec<SigningProfileConfig> = Vec::with_capacity(f.profiles.len());
        for p in f.profiles {
            let what = format!("keys.profiles[{:?}]", p.name);
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(format!("{what}: a profile name is 1 to 64 of a-z, 0-9, - and _"));
            }
            if p.name == DEFAULT_PROFILE {
                return Err(format!("{what}: \"default\" is the main key's profile; configure it under [keys]"));
            }
            if profiles.iter().any(|q| q.name == p.name) {
                return Err(format!("{what}: two profiles have this name"));
            }
            for a in &p.audiences {
                if let Some(other) = profiles.iter().find(|q| q.audiences.contains(a)) {
                    return Err(format!("{what}: audience {a:?} is already signed by profile {:?}", other.name));
                }
            }
            profiles.push(SigningProfileConfig {
                spec: key_spec(&what, &p.algorithm, p.rsa_bits)?,
                // Clouds cache a JWKS for a while: a new key is published an hour before it signs.
                rotation_lead: lead(&what, p.rotation_lead, Duration::from_secs(3600))?,
                audiences: p.audiences,
                name: p.name,
            });
        }
        Ok(Self { kek, algorithm, rotation_lead, profiles })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<KeysConfig, String> {
        toml::from_str::<KeysConfig>(toml_text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn defaults_and_a_cloud_profile() {
        let k = parse(
            r#"
            kek_env = "KEK"
            [[profiles]]
            name = "clouds"
            algorithm = "RS256"
            audiences = ["sts.amazonaws.com"]
            "#,
        )
        .unwrap();
        assert_eq!(k.algorithm, KeySpec::EdDsa);
        assert_eq!(k.rotation_lead, Duration::ZERO);
        let p = k.profile_for_audience("sts.amazonaws.com").unwrap();
        assert_eq!(
            (p.name.as_str(), p.spec, p.rotation_lead),
            ("clouds", KeySpec::Rs256(RsaBits::Bits2048), Duration::from_secs(3600))
        );
        let names: Vec<_> = k.signing_profiles().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["default", "clouds"]);
    }

    #[test]
    fn every_rule_has_its_message() {
        let cases = [
            ("kek_env = \"A\"\nkek_file = \"/f\"", "set one of kek_file and kek_env"),
            ("algorithm = \"HS256\"", "use EdDSA, ES256 or RS256"),
            ("algorithm = \"RS256\"\nrsa_bits = 1024", "use 2048 or 3072"),
            ("algorithm = \"EdDSA\"\nrsa_bits = 2048", "only for algorithm = \"RS256\""),
            ("rotation_lead = \"2d\"", "at most 24h"),
            ("[[profiles]]\nname = \"Bad Name\"\nalgorithm = \"RS256\"", "a profile name is 1 to 64"),
            ("[[profiles]]\nname = \"default\"\nalgorithm = \"RS256\"", "configure it under [keys]"),
            (
                "[[profiles]]\nname = \"a\"\nalgorithm = \"RS256\"\n[[profiles]]\nname = \"a\"\nalgorithm = \"ES256\"",
                "two profiles have this name",
            ),
            (
                "[[profiles]]\nname = \"a\"\nalgorithm = \"RS256\"\naudiences = [\"x\"]\n\
                 [[profiles]]\nname = \"b\"\nalgorithm = \"ES256\"\naudiences = [\"x\"]",
                "already signed by profile \"a\"",
            ),
        ];
        for (text, message) in cases {
            let err = parse(text).expect_err(text);
            assert!(err.contains(message), "{text}: {err}");
        }
    }
}
