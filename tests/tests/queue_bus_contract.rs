//! The queue and event-bus contracts, run against the in-process and the AWS adapters.

use voyage_tests::contract_tests;
use voyage_tests::fixtures;

macro_rules! every_queue_case {
    ($adapter:ident, $fixture:expr) => {
        contract_tests!(
            $adapter,
            $fixture,
            voyage_tests::contract::queue,
            [
                a_message_is_delivered_until_acked,
                a_delayed_message_waits_its_delay,
                a_released_message_returns_then_dead_letters,
                waits_beyond_the_queue_limit_are_chained,
                delays_beyond_the_limit_are_refused,
            ]
        );
    };
}

every_queue_case!(sqlite_queue, fixtures::sqlite_queue());
every_queue_case!(sqs_queue, fixtures::sqs_queue().await);

contract_tests!(
    sqlite_bus,
    fixtures::sqlite_bus(),
    voyage_tests::contract::bus,
    [every_published_event_reaches_the_target,]
);

contract_tests!(
    eventbridge_bus,
    fixtures::eventbridge_bus().await,
    voyage_tests::contract::bus,
    [every_published_event_reaches_the_target,]
);
