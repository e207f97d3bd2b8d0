//! The table and typed-store contracts, run against every table adapter.

use voyage_tests::contract_tests;
use voyage_tests::fixtures;

macro_rules! every_case {
    ($adapter:ident, $fixture:expr) => {
        mod $adapter {
            #[allow(unused_imports)]
            use super::*;
            contract_tests!(
                table,
                $fixture,
                voyage_tests::contract::table,
                [
                    create_is_refused_when_the_item_exists,
                    versioned_writes_are_compare_and_set,
                    items_round_trip_every_field,
                    batch_get_reads_what_exists,
                    batch_write_puts_and_deletes_within_limits,
                    transactions_are_all_or_nothing,
                    a_transactions_check_guards_its_writes_and_writes_nothing,
                    queries_are_ordered_paged_and_bounded,
                    queries_page_backwards_when_descending,
                    index_queries_are_ordered_and_paged,
                    index_entries_follow_the_item,
                    a_conditional_rewrite_moves_its_index_entries_with_it,
                ]
            );
            contract_tests!(
                store,
                $fixture,
                voyage_tests::contract::store,
                [
                    connections_refuse_duplicates_and_stale_writes,
                    connections_are_found_by_channel_and_listed_in_pages,
                    a_conflicting_cursor_update_is_refused,
                    api_keys_authenticate_until_revoked,
                    idempotency_claims_replay_and_expire,
                    mappings_are_read_by_event_in_batches,
                    overrides_are_written_in_batches_and_read_by_range,
                    sessions_are_conditional_and_found_by_staff_and_time,
                    credentials_are_replaced_and_kept_per_provider,
                    outbound_context_is_one_read_and_its_commit_all_or_nothing,
                    deliveries_listed_by_status_fill_their_pages_and_resume_after_the_last_listed,
                    a_cursor_of_another_listing_is_refused_as_the_cursor_field,
                    new_deliveries_are_made_once_and_each_maker_told_which_it_made,
                    a_channel_finds_its_connection_before_the_indexes_catch_up,
                    a_replaced_or_deleted_channel_finds_no_connection,
                    a_delivery_stored_before_the_log_was_keyed_by_time_sorts_among_the_new_ones,
                ]
            );
        }
    };
}

every_case!(memory, fixtures::memory_table());
every_case!(sqlite, fixtures::sqlite_table());
every_case!(dynamodb, fixtures::dynamo_table().await);
