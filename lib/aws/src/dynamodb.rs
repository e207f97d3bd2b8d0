use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, KeysAndAttributes, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification, TransactWriteItem, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use voyage_core::ports::table::{
    check_batch, check_transaction, page_of, prefix_end, Resume, BATCH_GET_LIMIT,
};
use voyage_core::ports::{Condition, Index, Item, Key, Page, Query, StoreError, Table, TxWrite};

use crate::describe;

/// The [`Table`] port on one DynamoDB table (`pk`/`sk`, GSIs `gsi1` and `gsi2`, TTL on
/// `ttl`). Reads of the base table are strongly consistent; index reads cannot be, so the
/// typed stores re-read the primary item where freshness matters.
#[derive(Clone)]
pub struct DynamoTable {
    client: Client,
    table: String,
}

const PK: &str = "pk";
const SK: &str = "sk";
const VERSION: &str = "ver";
const TTL: &str = "ttl";
const DATA: &str = "data";

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn key_map(key: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([(PK.to_string(), s(&key.pk)), (SK.to_string(), s(&key.sk))])
}

fn index_names(index: Index) -> (&'static str, &'static str, &'static str) {
    match index {
        Index::Gsi1 => ("gsi1", "gsi1pk", "gsi1sk"),
        Index::Gsi2 => ("gsi2", "gsi2pk", "gsi2sk"),
    }
}

fn to_attrs(item: &Item) -> HashMap<String, AttributeValue> {
    let mut m = key_map(&item.key);
    if let Some(k) = &item.gsi1 {
        m.insert("gsi1pk".into(), s(&k.pk));
        m.insert("gsi1sk".into(), s(&k.sk));
    }
    if let Some(k) = &item.gsi2 {
        m.insert("gsi2pk".into(), s(&k.pk));
        m.insert("gsi2sk".into(), s(&k.sk));
    }
    m.insert(VERSION.into(), AttributeValue::N(item.version.to_string()));
    if let Some(t) = item.expires_at {
        m.insert(TTL.into(), AttributeValue::N(t.to_string()));
    }
    m.insert(DATA.into(), s(&item.data));
    m
}

fn from_attrs(m: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let text = |name: &str| m.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| -> Result<Option<i64>, StoreError> {
        match m.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_n()
                .ok()
                .and_then(|n| n.parse::<i64>().ok())
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} is not a number"))),
        }
    };
    let required = |name: &str| {
        text(name).ok_or_else(|| StoreError::Corrupt(format!("item lacks string attribute {name}")))
    };
    let index = |p: &str, s: &str| match (text(p), text(s)) {
        (Some(pk), Some(sk)) => Some(Key { pk, sk }),
        _ => None,
    };
    Ok(Item {
        key: Key {
            pk: required(PK)?,
            sk: required(SK)?,
        },
        gsi1: index("gsi1pk", "gsi1sk"),
        gsi2: index("gsi2pk", "gsi2sk"),
        version: number(VERSION)?.unwrap_or(0) as u64,
        expires_at: number(TTL)?,
        data: required(DATA)?,
    })
}

/// The condition expression, names and values for `condition`.
struct Cond {
    expression: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

fn condition_parts(condition: Condition) -> Cond {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let expression = match condition {
        Condition::None => None,
        Condition::NotExists => {
            names.insert("#pk".into(), PK.into());
            Some("attribute_not_exists(#pk)".to_string())
        }
        Condition::Exists => {
            names.insert("#pk".into(), PK.into());
            Some("attribute_exists(#pk)".to_string())
        }
        Condition::Version(v) => {
            names.insert("#ver".into(), VERSION.into());
            values.insert(":ver".into(), AttributeValue::N(v.to_string()));
            Some("#ver = :ver".to_string())
        }
    };
    Cond {
        expression,
        names,
        values,
    }
}

fn non_empty<K, V>(m: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!m.is_empty()).then_some(m)
}

/// Why a conditional write failed, as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFailure {
    /// A condition did not hold: a lost race the typed store classifies.
    ConditionFailed,
    /// Another transaction held one of the items (`TransactionConflict`): nothing was
    /// written, so the same write is retried; still conflicting, it is a lost race too.
    TransactionConflict,
    /// Anything else (throttling, validation, the service unreachable).
    Other,
}

/// How many times a write cancelled by a transaction conflict is tried in all.
const CONFLICT_ATTEMPTS: u32 = 4;

/// Runs `write` until it succeeds, fails for good, or has met a transaction conflict
/// [`CONFLICT_ATTEMPTS`] times (`classify` reads the service's error); a conflict that persists
/// is [`StoreError::ConditionFailed`], the error of a lost race that callers re-read and retry,
/// never an outage.
async fn write_with_conflict_retries<F, Fut, O, E, R>(
    classify: fn(&E) -> WriteFailure,
    mut write: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<O, aws_sdk_dynamodb::error::SdkError<E, R>>>,
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let mut attempt = 1;
    loop {
        let e = match write().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let failure = e.as_service_error().map_or(WriteFailure::Other, classify);
        match store_error(failure, || describe(&e)) {
            Retry::Conflict if attempt < CONFLICT_ATTEMPTS => {
                backoff(attempt).await;
                attempt += 1;
            }
            Retry::Conflict => return Err(StoreError::ConditionFailed),
            Retry::Fail(e) => return Err(e),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Retry {
    Conflict,
    Fail(StoreError),
}

fn store_error(failure: WriteFailure, description: impl FnOnce() -> String) -> Retry {
    match failure {
        WriteFailure::ConditionFailed => Retry::Fail(StoreError::ConditionFailed),
        WriteFailure::TransactionConflict => Retry::Conflict,
        WriteFailure::Other => Retry::Fail(StoreError::Unavailable(description())),
    }
}

fn build_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("dynamodb request: {e}"))
}

/// Backoff for unprocessed batch items (DynamoDB throttling a batch in part).
async fn backoff(round: u32) {
    tokio::time::sleep(Duration::from_millis(25u64 << round.min(6))).await;
}

const MAX_BATCH_ROUNDS: u32 = 10;

impl DynamoTable {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoTable {
            client,
            table: table.into(),
        }
    }

    async fn run_query(&self, index: Option<Index>, q: Query) -> Result<Page, StoreError> {
        let limit = q.limit.max(1);
        let (index_name, pk_attr, sk_attr) = match index {
            Some(i) => {
                let (n, p, s) = index_names(i);
                (Some(n), p, s)
            }
            None => (None, PK, SK),
        };
        let mut names = HashMap::from([("#p".to_string(), pk_attr.to_string())]);
        let mut values = HashMap::from([(":p".to_string(), s(&q.pk))]);
        let mut expression = "#p = :p".to_string();
        // DynamoDB takes one condition on the sort key, and no empty string in it: the
        // prefix alone, or BETWEEN the lower end (the prefix, or `lower` when later) AND the
        // upper end (`upper`, or the end of the prefix; callers keep bounds within the
        // prefix). A key equal to the prefix's end (never one of ours) is dropped below.
        let lo = match &q.lower {
            Some(l) if l.as_str() > q.prefix.as_str() => l.clone(),
            _ => q.prefix.clone(),
        };
        let hi = match (&q.upper, &q.lower) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) if !q.prefix.is_empty() => Some(prefix_end(&q.prefix)),
            (None, _) => None,
        };
        match (hi, lo.is_empty()) {
            (None, true) => {}
            (None, false) if q.lower.is_some() => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":lo".into(), s(&lo));
                expression.push_str(" AND #s >= :lo");
            }
            (None, false) => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":lo".into(), s(&lo));
                expression.push_str(" AND begins_with(#s, :lo)");
            }
            (Some(upper), true) => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":hi".into(), s(&upper));
                expression.push_str(" AND #s <= :hi");
            }
            (Some(upper), false) => {
                names.insert("#s".into(), sk_attr.into());
                values.insert(":lo".into(), s(&lo));
                values.insert(":hi".into(), s(&upper));
                expression.push_str(" AND #s BETWEEN :lo AND :hi");
            }
        }
        let start = match &q.cursor {
            Some(c) => {
                let r = Resume::decode(c).ok_or_else(|| {
                    StoreError::Corrupt("query cursor is not one this store issued".into())
                })?;
                let mut k = key_map(&Key::new(r.pk, r.sk));
                if let (Some(i), Some(ipk), Some(isk)) = (index, r.ipk, r.isk) {
                    let (_, p, s_) = index_names(i);
                    k.insert(p.into(), s(&ipk));
                    k.insert(s_.into(), s(&isk));
                }
                Some(k)
            }
            None => None,
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(index_name.map(String::from))
            .key_condition_expression(expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .set_exclusive_start_key(start)
            .set_consistent_read(index.is_none().then_some(true))
            .scan_index_forward(!q.descending)
            .limit((limit + 1) as i32)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        let truncated = out.last_evaluated_key.is_some();
        let raw = out.items.unwrap_or_default();
        // LastEvaluatedKey is also set when exactly limit+1 items were read; only a short
        // read with a key means "cut by the 1 MB page limit".
        let cut = truncated && raw.len() <= limit;
        let mut items = raw.iter().map(from_attrs).collect::<Result<Vec<_>, _>>()?;
        if q.lower.is_some() && q.upper.is_none() && !q.prefix.is_empty() {
            items.retain(|i| {
                let sk = match index {
                    Some(Index::Gsi1) => i.gsi1.as_ref().map(|k| k.sk.as_str()),
                    Some(Index::Gsi2) => i.gsi2.as_ref().map(|k| k.sk.as_str()),
                    None => Some(i.key.sk.as_str()),
                };
                sk.is_some_and(|sk| sk.starts_with(q.prefix.as_str()))
            });
        }
        Ok(page_of(items, limit, index, cut))
    }
}

/// Why a transaction failed. A cancelled transaction lists a reason per item: a failed
/// condition on any item is a lost race; otherwise a concurrent transaction on one of them
/// (`TransactionConflict`) is worth retrying; throttling and the rest are the store's trouble.
fn transaction_failure(
    e: &aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
) -> WriteFailure {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match e {
        TransactWriteItemsError::TransactionCanceledException(t) => {
            let has = |code: &str| {
                t.cancellation_reasons()
                    .iter()
                    .any(|r| r.code() == Some(code))
            };
            if has("ConditionalCheckFailed") {
                WriteFailure::ConditionFailed
            } else if has("TransactionConflict") {
                WriteFailure::TransactionConflict
            } else {
                WriteFailure::Other
            }
        }
        _ => WriteFailure::Other,
    }
}

/// Why a single-item put failed: a single write on an item that a transaction holds fails with
/// `TransactionConflictException`.
fn put_failure(e: &aws_sdk_dynamodb::operation::put_item::PutItemError) -> WriteFailure {
    if e.is_conditional_check_failed_exception() {
        WriteFailure::ConditionFailed
    } else if e.is_transaction_conflict_exception() {
        WriteFailure::TransactionConflict
    } else {
        WriteFailure::Other
    }
}

fn delete_failure(e: &aws_sdk_dynamodb::operation::delete_item::DeleteItemError) -> WriteFailure {
    if e.is_conditional_check_failed_exception() {
        WriteFailure::ConditionFailed
    } else if e.is_transaction_conflict_exception() {
        WriteFailure::TransactionConflict
    } else {
        WriteFailure::Other
    }
}

#[async_trait]
impl Table for DynamoTable {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_map(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        out.item.as_ref().map(from_attrs).transpose()
    }

    async fn batch_get(&self, keys: &[Key]) -> Result<Vec<Item>, StoreError> {
        if keys.len() > BATCH_GET_LIMIT {
            return Err(StoreError::Unavailable(format!(
                "batch get of {} keys exceeds {BATCH_GET_LIMIT}",
                keys.len()
            )));
        }
        let mut unique: Vec<&Key> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let mut pending: Vec<HashMap<String, AttributeValue>> =
            unique.into_iter().map(key_map).collect();
        let mut out = Vec::new();
        let mut round = 0;
        while !pending.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            let resp = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| StoreError::Unavailable(describe(&e)))?;
            if let Some(mut found) = resp.responses {
                for m in found.remove(&self.table).unwrap_or_default() {
                    out.push(from_attrs(&m)?);
                }
            }
            if let Some(mut left) = resp.unprocessed_keys {
                if let Some(k) = left.remove(&self.table) {
                    pending = k.keys;
                }
            }
            if !pending.is_empty() {
                round += 1;
                if round > MAX_BATCH_ROUNDS {
                    return Err(StoreError::Unavailable(
                        "batch get kept being throttled".into(),
                    ));
                }
                backoff(round).await;
            }
        }
        Ok(out)
    }

    async fn put(&self, item: Item, condition: Condition) -> Result<(), StoreError> {
        let attrs = to_attrs(&item);
        write_with_conflict_retries(put_failure, || {
            let c = condition_parts(condition);
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(attrs.clone()))
                .set_condition_expression(c.expression)
                .set_expression_attribute_names(non_empty(c.names))
                .set_expression_attribute_values(non_empty(c.values))
                .send()
        })
        .await
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        write_with_conflict_retries(delete_failure, || {
            let c = condition_parts(condition);
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key_map(key)))
                .set_condition_expression(c.expression)
                .set_expression_attribute_names(non_empty(c.names))
                .set_expression_attribute_values(non_empty(c.values))
                .send()
        })
        .await
    }

    async fn batch_write(&self, puts: Vec<Item>, deletes: Vec<Key>) -> Result<(), StoreError> {
        check_batch(&puts, &deletes)?;
        let mut pending = Vec::with_capacity(puts.len() + deletes.len());
        for i in &puts {
            let put = aws_sdk_dynamodb::types::PutRequest::builder()
                .set_item(Some(to_attrs(i)))
                .build()
                .map_err(build_error)?;
            pending.push(WriteRequest::builder().put_request(put).build());
        }
        for k in &deletes {
            let del = aws_sdk_dynamodb::types::DeleteRequest::builder()
                .set_key(Some(key_map(k)))
                .build()
                .map_err(build_error)?;
            pending.push(WriteRequest::builder().delete_request(del).build());
        }
        let mut round = 0;
        while !pending.is_empty() {
            let resp = self
                .client
                .batch_write_item()
                .request_items(&self.table, std::mem::take(&mut pending))
                .send()
                .await
                .map_err(|e| StoreError::Unavailable(describe(&e)))?;
            if let Some(mut left) = resp.unprocessed_items {
                pending = left.remove(&self.table).unwrap_or_default();
            }
            if !pending.is_empty() {
                round += 1;
                if round > MAX_BATCH_ROUNDS {
                    return Err(StoreError::Unavailable(
                        "batch write kept being throttled".into(),
                    ));
                }
                backoff(round).await;
            }
        }
        Ok(())
    }

    async fn transact(&self, writes: Vec<TxWrite>) -> Result<(), StoreError> {
        check_transaction(&writes)?;
        if writes.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(writes.len());
        for w in &writes {
            let item = match w {
                TxWrite::Put(i, c) => {
                    let c = condition_parts(*c);
                    let put = aws_sdk_dynamodb::types::Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(to_attrs(i)))
                        .set_condition_expression(c.expression)
                        .set_expression_attribute_names(non_empty(c.names))
                        .set_expression_attribute_values(non_empty(c.values))
                        .build()
                        .map_err(build_error)?;
                    TransactWriteItem::builder().put(put).build()
                }
                TxWrite::Delete(k, c) => {
                    let c = condition_parts(*c);
                    let del = aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_map(k)))
                        .set_condition_expression(c.expression)
                        .set_expression_attribute_names(non_empty(c.names))
                        .set_expression_attribute_values(non_empty(c.values))
                        .build()
                        .map_err(build_error)?;
                    TransactWriteItem::builder().delete(del).build()
                }
                TxWrite::Check(k, c) => {
                    let c = condition_parts(*c);
                    let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_map(k)))
                        .set_condition_expression(c.expression)
                        .set_expression_attribute_names(non_empty(c.names))
                        .set_expression_attribute_values(non_empty(c.values))
                        .build()
                        .map_err(build_error)?;
                    TransactWriteItem::builder().condition_check(check).build()
                }
            };
            items.push(item);
        }
        write_with_conflict_retries(transaction_failure, || {
            self.client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
        })
        .await
    }

    async fn query(&self, query: Query) -> Result<Page, StoreError> {
        self.run_query(None, query).await
    }

    async fn query_index(&self, index: Index, query: Query) -> Result<Page, StoreError> {
        self.run_query(Some(index), query).await
    }

    async fn purge_expired(&self, _now: i64) -> Result<u64, StoreError> {
        // DynamoDB's TTL deletes expired items itself; the typed stores ignore expired items
        // until it does.
        Ok(0)
    }
}

/// Creates the table as template.yaml declares it (for tests and local AWS emulators).
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_error)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build_error)
    };
    let gsi = |name: &str, pk: &str, sk: &str| -> Result<GlobalSecondaryIndex, StoreError> {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(pk, KeyType::Hash)?)
            .key_schema(key(sk, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(build_error)
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK)?)
        .attribute_definitions(attr(SK)?)
        .attribute_definitions(attr("gsi1pk")?)
        .attribute_definitions(attr("gsi1sk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(gsi("gsi1", "gsi1pk", "gsi1sk")?)
        .global_secondary_indexes(gsi("gsi2", "gsi2pk", "gsi2sk")?)
        .send()
        .await
        .map_err(|e| StoreError::Unavailable(describe(&e)))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL)
                .enabled(true)
                .build()
                .map_err(build_error)?,
        )
        .send()
        .await
        .map_err(|e| StoreError::Unavailable(describe(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    use aws_sdk_dynamodb::types::error::{
        ConditionalCheckFailedException, ProvisionedThroughputExceededException,
        TransactionCanceledException, TransactionConflictException,
    };
    use aws_sdk_dynamodb::types::CancellationReason;

    fn cancelled(codes: &[&str]) -> TransactWriteItemsError {
        let reasons = codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect();
        TransactWriteItemsError::TransactionCanceledException(
            TransactionCanceledException::builder()
                .set_cancellation_reasons(Some(reasons))
                .build(),
        )
    }

    #[test]
    fn a_transaction_conflict_is_retried_not_an_outage() {
        // Reasons as DynamoDB lists them: one per item, `None` for items that were fine.
        assert_eq!(
            transaction_failure(&cancelled(&["None", "TransactionConflict"])),
            WriteFailure::TransactionConflict
        );
        assert_eq!(
            transaction_failure(&cancelled(&[
                "TransactionConflict",
                "ConditionalCheckFailed"
            ])),
            WriteFailure::ConditionFailed
        );
        assert_eq!(
            transaction_failure(&cancelled(&["ConditionalCheckFailed", "None"])),
            WriteFailure::ConditionFailed
        );
        assert_eq!(
            transaction_failure(&cancelled(&["ThrottlingError"])),
            WriteFailure::Other
        );
        assert_eq!(
            put_failure(&PutItemError::TransactionConflictException(
                TransactionConflictException::builder().build()
            )),
            WriteFailure::TransactionConflict
        );
        assert_eq!(
            put_failure(&PutItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder().build()
            )),
            WriteFailure::ConditionFailed
        );
        assert_eq!(
            put_failure(&PutItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder().build()
            )),
            WriteFailure::Other
        );
        assert_eq!(
            delete_failure(&DeleteItemError::TransactionConflictException(
                TransactionConflictException::builder().build()
            )),
            WriteFailure::TransactionConflict
        );
    }

    #[test]
    fn failures_become_store_errors() {
        let none = || -> String { unreachable!("only an outage is described") };
        assert_eq!(
            store_error(WriteFailure::ConditionFailed, none),
            Retry::Fail(StoreError::ConditionFailed)
        );
        assert_eq!(
            store_error(WriteFailure::TransactionConflict, none),
            Retry::Conflict
        );
        assert_eq!(
            store_error(WriteFailure::Other, || "throttled".into()),
            Retry::Fail(StoreError::Unavailable("throttled".into()))
        );
    }

    #[tokio::test]
    async fn a_conflict_that_persists_is_a_lost_race() {
        use aws_sdk_dynamodb::error::SdkError;
        use std::sync::atomic::{AtomicU32, Ordering};

        let calls = AtomicU32::new(0);
        let conflict = || {
            calls.fetch_add(1, Ordering::SeqCst);
            let e: SdkError<PutItemError, ()> = SdkError::service_error(
                PutItemError::TransactionConflictException(
                    TransactionConflictException::builder().build(),
                ),
                (),
            );
            std::future::ready(Err::<(), _>(e))
        };
        let result = write_with_conflict_retries(put_failure, conflict).await;
        assert_eq!(result, Err(StoreError::ConditionFailed));
        assert_eq!(calls.load(Ordering::SeqCst), CONFLICT_ATTEMPTS);

        // A conflict that clears is a success on a later attempt.
        let calls = AtomicU32::new(0);
        let clears = || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n == 0 {
                Err(SdkError::<PutItemError, ()>::service_error(
                    PutItemError::TransactionConflictException(
                        TransactionConflictException::builder().build(),
                    ),
                    (),
                ))
            } else {
                Ok(())
            })
        };
        assert_eq!(
            write_with_conflict_retries(put_failure, clears).await,
            Ok(())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
