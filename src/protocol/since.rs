//! `since`: the position a client last saw on a topic with history, which a `subscribe`
//! recovers from and a `history` request pages from.

use serde::Deserialize;
use serde_json::value::RawValue;

/// `{"offset": N, "epoch": "…"}`, as the client took them from the last `message` it
/// processed (or from an ack or a history page).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

impl Since {
    /// Reads `since`; the error says what a valid one looks like.
    pub fn parse(raw: &RawValue) -> Result<Since, String> {
        serde_json::from_str(raw.get()).map_err(|e| {
            format!("\"since\" must be {{\"offset\": a whole number >= 0, \"epoch\": a string}} as last received: {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Since, String> {
        Since::parse(&RawValue::from_string(text.into()).unwrap())
    }

    #[test]
    fn reads_an_offset_and_an_epoch_and_nothing_else() {
        assert_eq!(parse(r#"{"offset":7,"epoch":"ab"}"#), Ok(Since { offset: 7, epoch: "ab".into() }));
        for bad in [r#"{"offset":-1,"epoch":"a"}"#, r#"{"offset":1.5,"epoch":"a"}"#, r#"{"offset":"1","epoch":"a"}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse(r#"{"offset":1}"#).is_err());
        assert!(parse(r#"{"offset":1,"epoch":"a","x":1}"#).is_err());
        assert!(parse("3").is_err());
    }
}
