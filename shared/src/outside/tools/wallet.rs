//! A wallet per instance: a secp256k1 key generated here and handed to the instance as
//! `PRIVATE_WALLET_KEY`. The key is never stored; only its address is recorded, so no listing, page
//! or log can show it, and destroying the instance's record is all there is to destroy.

use async_trait::async_trait;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{json, Value};
use sha3::{Digest, Keccak256};

use super::{Listed, Provisioned, Target, Tool};
use crate::error::Result;

pub struct Wallet;

/// The Ethereum address of a key: the last 20 bytes of the Keccak-256 of its public point.
fn address(key: &k256::SecretKey) -> String {
    let point = key.public_key().to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    format!("0x{}", hex::encode(&hash[12..]))
}

#[async_trait]
impl Tool for Wallet {
    fn id(&self) -> &'static str {
        "wallet"
    }

    fn step(&self) -> &'static str {
        "wallet"
    }

    async fn create(&self, _target: Target<'_>) -> Result<Provisioned> {
        let key = k256::SecretKey::random(&mut rand::rngs::OsRng);
        let address = address(&key);
        Ok(Provisioned {
            resource_id: address.clone(),
            config: json!({"address": address}),
            env: vec![(
                "PRIVATE_WALLET_KEY".into(),
                format!("0x{}", hex::encode(key.to_bytes())),
            )],
        })
    }

    async fn update(&self, _resource_id: &str, _config: &Value) -> Result<()> {
        Ok(())
    }

    async fn destroy(&self, _resource_id: &str) -> Result<()> {
        Ok(())
    }

    async fn list(&self, _prefix: &str) -> Result<Option<Vec<Listed>>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_ethereums() {
        // The well-known key 0x...01 has this address.
        let mut bytes = [0u8; 32];
        bytes[31] = 1;
        let key = k256::SecretKey::from_slice(&bytes).unwrap();
        assert_eq!(address(&key), "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf");
    }

    #[tokio::test]
    async fn the_key_goes_to_the_instance_and_only_the_address_is_kept() {
        let made = Wallet
            .create(Target {
                instance_id: "abc",
                name: "ap-abc",
            })
            .await
            .unwrap();
        let key = &made.env[0].1;
        assert_eq!(made.env[0].0, "PRIVATE_WALLET_KEY");
        assert!(!made.config.to_string().contains(&key[2..]));
        assert!(!format!("{made:?}").contains(&key[2..]));
        assert!(made.resource_id.starts_with("0x") && made.resource_id.len() == 42);
    }
}
