//! `coinop chain add-headers FILE`: a header file of any length, sent as as many
//! `POST /v1/chain/headers` requests as it takes for each body to fit the daemon's body
//! limit (`coinopd --max-body-bytes`, by default
//! [`DEFAULT_MAX_BODY_BYTES`](coinop_proto::requests::DEFAULT_MAX_BODY_BYTES)).
//!
//! Requests go oldest first, so each batch builds on the ones before. The daemon skips the
//! headers it already has, so running the command again (after an interruption, or with a
//! file that overlaps the chain) is safe: known headers count as accepted, not added. A
//! daemon with a smaller limit than the one assumed answers 413; the batch is then halved and
//! sent again, so the upload still goes through. Progress goes to stderr, one line per batch;
//! the answer is the last batch's tip with the sum of what all batches added.

use coinop_proto::replies::HeadersResponse;
use coinop_proto::requests::{json_string_len, HeadersRequest};

use crate::client::Client;
use crate::commands::{encode, show, View};
use crate::exit::{note, Exit};
use crate::input;

/// HTTP 413: the body was larger than the daemon takes.
const PAYLOAD_TOO_LARGE: u16 = 413;

/// How many of `headers` (from the first) fit one request body of at most `max_body` bytes;
/// at least one, so that a single header too large for any body still gets the daemon's
/// own answer.
fn batch_len(headers: &[String], max_body: usize) -> usize {
    let mut len = HeadersRequest { headers: vec![] }.encoded_len();
    let mut n = 0;
    for h in headers {
        let more = json_string_len(h) + usize::from(n > 0);
        if n > 0 && len + more > max_body {
            break;
        }
        len += more;
        n += 1;
    }
    n
}

/// Sends the headers of `file` in batches that fit `max_body` bytes.
pub async fn add_headers(
    c: &Client,
    file: &str,
    max_body: usize,
    json_mode: bool,
) -> Result<(), Exit> {
    if max_body == 0 {
        return Err(Exit::usage("--max-body-bytes must be greater than zero"));
    }
    let headers = input::read_headers(file)?;
    let total = headers.len();
    let mut budget = max_body;
    let mut sent = 0;
    let mut added = 0;
    let mut reorg = false;
    let mut batches = 0;
    let mut last = None;
    while sent < total {
        let n = batch_len(&headers[sent..], budget);
        let body = encode(&HeadersRequest {
            headers: headers[sent..sent + n].to_vec(),
        })?;
        let r = c
            .call("POST", "/v1/chain/headers", None, Some(body))
            .await
            .map_err(Exit::from_client)?;
        if r.status == PAYLOAD_TOO_LARGE && n > 1 {
            // The daemon takes less than assumed: halve the batch and send it again.
            budget = (budget / 2).max(1);
            note(&format!(
                "the daemon refused {n} headers in one body (413); sending fewer"
            ));
            continue;
        }
        if !(200..300).contains(&r.status) {
            if sent > 0 {
                note(&format!(
                    "{sent} of {total} headers were accepted before this error; \
                     running the command again resends only what is missing"
                ));
            }
            return show(&r, View::Headers, json_mode);
        }
        let h: HeadersResponse = r.parse().map_err(|e| {
            Exit::usage(format!("the daemon's answer to headers is unreadable: {e}"))
        })?;
        sent += n;
        added += h.added;
        reorg |= h.reorg;
        batches += 1;
        note(&format!(
            "headers {sent}/{total} sent ({} new in this batch), tip {} {}",
            h.added, h.tip.height, h.tip.hash
        ));
        last = Some(h);
    }
    let Some(last) = last else {
        return Err(Exit::usage(format!("{file}: no headers")));
    };
    let summary = HeadersResponse {
        added,
        reorg,
        tip: last.tip,
    };
    if batches > 1 {
        note(&format!("{total} headers in {batches} requests"));
    }
    let body = encode(&summary)?;
    show(
        &crate::client::Reply {
            status: 200,
            body: body.into(),
        },
        View::Headers,
        json_mode,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use coinop_proto::requests::DEFAULT_MAX_BODY_BYTES;

    #[test]
    fn batches_fill_the_body_limit_and_never_pass_it() {
        let headers = vec!["ab".repeat(80); 5000];
        let n = batch_len(&headers, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(n, 1608);
        let fits = |n: usize| {
            serde_json::to_vec(&HeadersRequest {
                headers: headers[..n].to_vec(),
            })
            .expect("encodes")
            .len()
        };
        assert!(fits(n) <= DEFAULT_MAX_BODY_BYTES);
        assert!(fits(n + 1) > DEFAULT_MAX_BODY_BYTES);
        assert_eq!(batch_len(&headers[..10], DEFAULT_MAX_BODY_BYTES), 10);
        // Never zero: one header goes even if no body could hold it.
        assert_eq!(batch_len(&headers, 10), 1);
    }
}
