//! Cashu tokens (NUT-00 "Serialization of tokens"): the text a wallet hands to another
//! wallet, `cashuA…` (V3: JSON) or `cashuB…` (V4: CBOR), both base64url.
//!
//! [`Token`] is one mint's proofs with the mint URL, unit and memo. Decoding accepts both
//! versions, padded or not, with or without the `cashu:` URI scheme; a V3 token naming more
//! than one mint is refused (a coinop wallet holds one mint's notes). Encoding V4 groups the
//! proofs by keyset and carries ids, signatures and DLEQ values as CBOR byte strings, as the
//! NUT says; the keyset id is written in full (coinop's V00 ids are already the 8 bytes a
//! short id has). A V4 token from another wallet may carry a short id for a longer keyset id:
//! [`Token::resolve_keyset_ids`] maps it back against the mint's keysets.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use thiserror::Error;

use super::nut_types::{Proof, ProofDleq};

const PREFIX: &str = "cashu";
const URI_SCHEME: &str = "cashu:";

/// base64url that writes padding (as the NUT's own V4 examples do) and reads it either way
/// ("Clients need to be able to decode both cases").
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("not a Cashu token: it does not start with 'cashuA' or 'cashuB'")]
    NoPrefix,
    #[error("Cashu token version '{0}' is not supported (only A = V3 and B = V4)")]
    UnknownVersion(char),
    #[error("the token is not base64url: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("the V3 token is not its JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the V4 token is not its CBOR: {0}")]
    Cbor(String),
    #[error("the token's '{field}' is not hex: {value:?}")]
    Hex { field: &'static str, value: String },
    #[error("the token holds proofs of {0} mints; one mint per token is supported")]
    MultipleMints(usize),
    #[error("the token holds no proofs")]
    Empty,
    #[error("the token's amounts add up to more than 2^64 sat")]
    Overflow,
    #[error("short keyset id {short} matches {count} of the mint's keysets")]
    AmbiguousKeyset { short: String, count: usize },
}

/// One mint's proofs, as a token carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// The mint URL, without a trailing slash.
    pub mint: String,
    pub unit: Option<String>,
    pub memo: Option<String>,
    pub proofs: Vec<Proof>,
}

/// V3 JSON: `{"token": [{"mint", "proofs"}], "unit", "memo"}`.
#[derive(Serialize, Deserialize)]
struct V3 {
    token: Vec<V3Entry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memo: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct V3Entry {
    mint: String,
    proofs: Vec<Proof>,
}

/// V4 CBOR, field for field (one-letter keys, in the order the NUT's examples write them).
#[derive(Serialize, Deserialize)]
struct V4 {
    t: Vec<V4Keyset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<String>,
    m: String,
    #[serde(default)]
    u: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct V4Keyset {
    i: ByteBuf,
    p: Vec<V4Proof>,
}

#[derive(Serialize, Deserialize)]
struct V4Proof {
    a: u64,
    s: String,
    c: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<V4Dleq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    w: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct V4Dleq {
    e: ByteBuf,
    s: ByteBuf,
    r: ByteBuf,
}

fn unhex(field: &'static str, value: &str) -> Result<ByteBuf, TokenError> {
    hex::decode(value)
        .map(ByteBuf::from)
        .map_err(|_| TokenError::Hex {
            field,
            value: value.to_string(),
        })
}

/// The mint URL as tokens carry it: trailing slashes stripped (NUT-00).
fn normalise_mint(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

impl Token {
    /// The sum of the proofs' amounts.
    pub fn amount(&self) -> Result<u64, TokenError> {
        self.proofs
            .iter()
            .try_fold(0u64, |acc, p| acc.checked_add(p.amount))
            .ok_or(TokenError::Overflow)
    }

    /// Reads a `cashuA…` or `cashuB…` token (surrounding whitespace and a `cashu:` scheme
    /// are allowed).
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let text = text.strip_prefix(URI_SCHEME).unwrap_or(text);
        let rest = text.strip_prefix(PREFIX).ok_or(TokenError::NoPrefix)?;
        let mut chars = rest.chars();
        let version = chars.next().ok_or(TokenError::NoPrefix)?;
        let body = BASE64URL.decode(chars.as_str())?;
        let token = match version {
            'A' => Self::from_v3(serde_json::from_slice(&body)?)?,
            'B' => Self::from_v4(
                ciborium::from_reader(body.as_slice())
                    .map_err(|e| TokenError::Cbor(e.to_string()))?,
            ),
            other => return Err(TokenError::UnknownVersion(other)),
        };
        if token.proofs.is_empty() {
            return Err(TokenError::Empty);
        }
        token.amount()?;
        Ok(token)
    }

    fn from_v3(v3: V3) -> Result<Token, TokenError> {
        let mut mints: Vec<String> = v3.token.iter().map(|e| normalise_mint(&e.mint)).collect();
        mints.dedup();
        if mints.len() > 1 {
            return Err(TokenError::MultipleMints(mints.len()));
        }
        Ok(Token {
            mint: mints.pop().unwrap_or_default(),
            unit: v3.unit,
            memo: v3.memo,
            proofs: v3.token.into_iter().flat_map(|e| e.proofs).collect(),
        })
    }

    fn from_v4(v4: V4) -> Token {
        let proofs =
            v4.t.into_iter()
                .flat_map(|k| {
                    let id = hex::encode(&k.i);
                    k.p.into_iter().map(move |p| Proof {
                        amount: p.a,
                        id: id.clone(),
                        secret: p.s,
                        c: hex::encode(&p.c),
                        witness: p.w,
                        dleq: p.d.map(|d| ProofDleq {
                            e: hex::encode(&d.e),
                            s: hex::encode(&d.s),
                            r: hex::encode(&d.r),
                        }),
                    })
                })
                .collect();
        Token {
            mint: normalise_mint(&v4.m),
            unit: v4.u,
            memo: v4.d,
            proofs,
        }
    }

    /// `cashuA…`: the deprecated V3 JSON token, for wallets that read nothing newer.
    pub fn encode_v3(&self) -> String {
        let v3 = V3 {
            token: vec![V3Entry {
                mint: normalise_mint(&self.mint),
                proofs: self.proofs.clone(),
            }],
            unit: self.unit.clone(),
            memo: self.memo.clone(),
        };
        let json = serde_json::to_vec(&v3)
            .expect("a token is strings and integers, which JSON always encodes");
        // The NUT's V3 example is written without padding.
        format!(
            "{PREFIX}A{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// `cashuB…`: the V4 CBOR token. Fails only if a proof's id, `C` or DLEQ is not hex.
    pub fn encode_v4(&self) -> Result<String, TokenError> {
        // Proofs grouped by keyset, groups in the order their first proof appears.
        let mut groups: Vec<(String, Vec<&Proof>)> = Vec::new();
        for p in &self.proofs {
            match groups.iter_mut().find(|(id, _)| *id == p.id) {
                Some((_, ps)) => ps.push(p),
                None => groups.push((p.id.clone(), vec![p])),
            }
        }
        let t = groups
            .into_iter()
            .map(|(id, ps)| {
                Ok(V4Keyset {
                    i: unhex("id", &id)?,
                    p: ps
                        .into_iter()
                        .map(|p| {
                            Ok(V4Proof {
                                a: p.amount,
                                s: p.secret.clone(),
                                c: unhex("C", &p.c)?,
                                d: p.dleq
                                    .as_ref()
                                    .map(|d| {
                                        Ok::<_, TokenError>(V4Dleq {
                                            e: unhex("dleq.e", &d.e)?,
                                            s: unhex("dleq.s", &d.s)?,
                                            r: unhex("dleq.r", &d.r)?,
                                        })
                                    })
                                    .transpose()?,
                                w: p.witness.clone(),
                            })
                        })
                        .collect::<Result<_, TokenError>>()?,
                })
            })
            .collect::<Result<_, TokenError>>()?;
        let v4 = V4 {
            t,
            d: self.memo.clone(),
            m: normalise_mint(&self.mint),
            u: Some(self.unit.clone().unwrap_or_else(|| "sat".to_string())),
        };
        let mut cbor = Vec::new();
        ciborium::into_writer(&v4, &mut cbor)
            .expect("writing CBOR into a Vec fails only on allocation");
        Ok(format!("{PREFIX}B{}", BASE64URL.encode(cbor)))
    }

    /// Replaces short keyset ids (the first 8 bytes of a longer id, NUT-00 "Short keyset
    /// ID") by the full id among `known`; an id matching none is left as it is, for the
    /// caller (or the mint) to refuse.
    pub fn resolve_keyset_ids(&mut self, known: &[&str]) -> Result<(), TokenError> {
        for p in &mut self.proofs {
            if known.contains(&p.id.as_str()) {
                continue;
            }
            let matching: Vec<&&str> = known.iter().filter(|k| k.starts_with(&p.id)).collect();
            match matching.as_slice() {
                [] => {}
                [one] => p.id = one.to_string(),
                many => {
                    return Err(TokenError::AmbiguousKeyset {
                        short: p.id.clone(),
                        count: many.len(),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The vectors are the values of cashubtc/nuts `tests/00-tests.md` ("Serialization of
    //! TokenV3", "Deserialization of TokenV3", "Serialization of TokenV4"), at commit
    //! 279d706e48d57ee03ac43c1b62ad7172952ed138.

    use super::*;

    const V3_VECTOR: &str = "cashuAeyJ0b2tlbiI6W3sibWludCI6Imh0dHBzOi8vODMzMy5zcGFjZTozMzM4IiwicHJvb2ZzIjpbeyJhbW91bnQiOjIsImlkIjoiMDA5YTFmMjkzMjUzZTQxZSIsInNlY3JldCI6IjQwNzkxNWJjMjEyYmU2MWE3N2UzZTZkMmFlYjRjNzI3OTgwYmRhNTFjZDA2YTZhZmMyOWUyODYxNzY4YTc4MzciLCJDIjoiMDJiYzkwOTc5OTdkODFhZmIyY2M3MzQ2YjVlNDM0NWE5MzQ2YmQyYTUwNmViNzk1ODU5OGE3MmYwY2Y4NTE2M2VhIn0seyJhbW91bnQiOjgsImlkIjoiMDA5YTFmMjkzMjUzZTQxZSIsInNlY3JldCI6ImZlMTUxMDkzMTRlNjFkNzc1NmIwZjhlZTBmMjNhNjI0YWNhYTNmNGUwNDJmNjE0MzNjNzI4YzcwNTdiOTMxYmUiLCJDIjoiMDI5ZThlNTA1MGI4OTBhN2Q2YzA5NjhkYjE2YmMxZDVkNWZhMDQwZWExZGUyODRmNmVjNjlkNjEyOTlmNjcxMDU5In1dfV0sInVuaXQiOiJzYXQiLCJtZW1vIjoiVGhhbmsgeW91LiJ9";

    const V4_SINGLE: &str = "cashuBpGF0gaJhaUgArSaMTR9YJmFwgaNhYQFhc3hAOWE2ZGJiODQ3YmQyMzJiYTc2ZGIwZGYxOTcyMTZiMjlkM2I4Y2MxNDU1M2NkMjc4MjdmYzFjYzk0MmZlZGI0ZWFjWCEDhhhUP_trhpXfStS6vN6So0qWvc2X3O4NfM-Y1HISZ5JhZGlUaGFuayB5b3VhbXVodHRwOi8vbG9jYWxob3N0OjMzMzhhdWNzYXQ=";

    const V4_MULTI: &str = "cashuBo2F0gqJhaUgA_9SLj17PgGFwgaNhYQFhc3hAYWNjMTI0MzVlN2I4NDg0YzNjZjE4NTAxNDkyMThhZjkwZjcxNmE1MmJmNGE1ZWQzNDdlNDhlY2MxM2Y3NzM4OGFjWCECRFODGd5IXVW-07KaZCvuWHk3WrnnpiDhHki6SCQh88-iYWlIAK0mjE0fWCZhcIKjYWECYXN4QDEzMjNkM2Q0NzA3YTU4YWQyZTIzYWRhNGU5ZjFmNDlmNWE1YjRhYzdiNzA4ZWIwZDYxZjczOGY0ODMwN2U4ZWVhY1ghAjRWqhENhLSsdHrr2Cw7AFrKUL9Ffr1XN6RBT6w659lNo2FhAWFzeEA1NmJjYmNiYjdjYzY0MDZiM2ZhNWQ1N2QyMTc0ZjRlZmY4YjQ0MDJiMTc2OTI2ZDNhNTdkM2MzZGNiYjU5ZDU3YWNYIQJzEpxXGeWZN5qXSmJjY8MzxWyvwObQGr5G1YCCgHicY2FtdWh0dHA6Ly9sb2NhbGhvc3Q6MzMzOGF1Y3NhdA==";

    fn proof(amount: u64, id: &str, secret: &str, c: &str) -> Proof {
        Proof {
            amount,
            id: id.into(),
            secret: secret.into(),
            c: c.into(),
            witness: None,
            dleq: None,
        }
    }

    fn v3_token() -> Token {
        Token {
            mint: "https://8333.space:3338".into(),
            unit: Some("sat".into()),
            memo: Some("Thank you.".into()),
            proofs: vec![
                proof(
                    2,
                    "009a1f293253e41e",
                    "407915bc212be61a77e3e6d2aeb4c727980bda51cd06a6afc29e2861768a7837",
                    "02bc9097997d81afb2cc7346b5e4345a9346bd2a506eb7958598a72f0cf85163ea",
                ),
                proof(
                    8,
                    "009a1f293253e41e",
                    "fe15109314e61d7756b0f8ee0f23a624acaa3f4e042f61433c728c7057b931be",
                    "029e8e5050b890a7d6c0968db16bc1d5d5fa040ea1de284f6ec69d61299f671059",
                ),
            ],
        }
    }

    #[test]
    fn v3_vector_round_trips() {
        assert_eq!(Token::decode(V3_VECTOR).expect("decode"), v3_token());
        assert_eq!(v3_token().encode_v3(), V3_VECTOR);
        assert_eq!(v3_token().amount().expect("sum"), 10);
    }

    #[test]
    fn v3_vector_with_bad_prefix_is_refused() {
        let body = V3_VECTOR.strip_prefix("cashuA").expect("prefix");
        assert!(matches!(
            Token::decode(&format!("casshuA{body}")),
            Err(TokenError::NoPrefix)
        ));
        assert!(matches!(Token::decode(body), Err(TokenError::NoPrefix)));
    }

    #[test]
    fn v4_single_keyset_vector_round_trips() {
        let want = Token {
            mint: "http://localhost:3338".into(),
            unit: Some("sat".into()),
            memo: Some("Thank you".into()),
            proofs: vec![proof(
                1,
                "00ad268c4d1f5826",
                "9a6dbb847bd232ba76db0df197216b29d3b8cc14553cd27827fc1cc942fedb4e",
                "038618543ffb6b8695df4ad4babcde92a34a96bdcd97dcee0d7ccf98d472126792",
            )],
        };
        assert_eq!(Token::decode(V4_SINGLE).expect("decode"), want);
        assert_eq!(want.encode_v4().expect("encode"), V4_SINGLE);
        // Without padding, as other wallets may write it.
        let unpadded = V4_SINGLE.trim_end_matches('=');
        assert_eq!(Token::decode(unpadded).expect("decode"), want);
        assert_eq!(
            Token::decode(&format!("cashu:{unpadded}")).expect("decode"),
            want
        );
    }

    #[test]
    fn v4_two_keyset_vector_round_trips() {
        let want = Token {
            mint: "http://localhost:3338".into(),
            unit: Some("sat".into()),
            memo: None,
            proofs: vec![
                proof(
                    1,
                    "00ffd48b8f5ecf80",
                    "acc12435e7b8484c3cf1850149218af90f716a52bf4a5ed347e48ecc13f77388",
                    "0244538319de485d55bed3b29a642bee5879375ab9e7a620e11e48ba482421f3cf",
                ),
                proof(
                    2,
                    "00ad268c4d1f5826",
                    "1323d3d4707a58ad2e23ada4e9f1f49f5a5b4ac7b708eb0d61f738f48307e8ee",
                    "023456aa110d84b4ac747aebd82c3b005aca50bf457ebd5737a4414fac3ae7d94d",
                ),
                proof(
                    1,
                    "00ad268c4d1f5826",
                    "56bcbcbb7cc6406b3fa5d57d2174f4eff8b4402b176926d3a57d3c3dcbb59d57",
                    "0273129c5719e599379a974a626363c333c56cafc0e6d01abe46d5808280789c63",
                ),
            ],
        };
        assert_eq!(Token::decode(V4_MULTI).expect("decode"), want);
        assert_eq!(want.encode_v4().expect("encode"), V4_MULTI);
    }

    #[test]
    fn dleq_and_witness_survive_v4() {
        let mut t = v3_token();
        t.proofs[0].dleq = Some(ProofDleq {
            e: "11".repeat(32),
            s: "22".repeat(32),
            r: "33".repeat(32),
        });
        t.proofs[1].witness = Some("{\"signatures\":[]}".into());
        let back = Token::decode(&t.encode_v4().expect("encode")).expect("decode");
        assert_eq!(back, t);
    }

    #[test]
    fn bad_tokens_are_typed_errors() {
        assert!(matches!(
            Token::decode("cashuCabc"),
            Err(TokenError::UnknownVersion('C'))
        ));
        assert!(matches!(
            Token::decode("cashuB!!!"),
            Err(TokenError::Base64(_))
        ));
        // Valid base64, not CBOR of a token.
        assert!(matches!(
            Token::decode("cashuBAAAA"),
            Err(TokenError::Cbor(_))
        ));
        let mut t = v3_token();
        t.proofs[0].c = "not hex".into();
        assert!(matches!(
            t.encode_v4(),
            Err(TokenError::Hex { field: "C", .. })
        ));
        t.proofs.clear();
        assert!(matches!(
            Token::decode(&t.encode_v3()),
            Err(TokenError::Empty)
        ));
    }

    #[test]
    fn a_v3_token_of_two_mints_is_refused() {
        let json = serde_json::json!({"token": [
            {"mint": "https://a.example", "proofs": [v3_token().proofs[0]]},
            {"mint": "https://b.example", "proofs": [v3_token().proofs[1]]},
        ]});
        let text = format!(
            "cashuA{}",
            BASE64URL.encode(serde_json::to_vec(&json).expect("json"))
        );
        assert!(matches!(
            Token::decode(&text),
            Err(TokenError::MultipleMints(2))
        ));
    }

    #[test]
    fn short_keyset_ids_resolve_or_are_ambiguous() {
        let long = "01adc013fa9d85171586660abab27579888611659d357bc86bc09cb26eee8bc035";
        let mut t = v3_token();
        t.proofs[0].id = long[..16].to_string();
        t.resolve_keyset_ids(&[long, "009a1f293253e41e"])
            .expect("resolves");
        assert_eq!(t.proofs[0].id, long);
        assert_eq!(t.proofs[1].id, "009a1f293253e41e");

        let other = format!("{}ff", &long[..64]);
        t.proofs[0].id = long[..16].to_string();
        assert!(matches!(
            t.resolve_keyset_ids(&[long, &other]),
            Err(TokenError::AmbiguousKeyset { count: 2, .. })
        ));
    }
}
