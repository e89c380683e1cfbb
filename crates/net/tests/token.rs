//! Stages served with a token (`Stages::token`) answer only calls that carry it
//! (`Access::with_token`): the cluster id alone, or a guess, is refused before any stage is
//! reached, and a token is asked only while the stages that carry one are served.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::sync::Arc;

use strata_core::{Epoch, Sequencer, Version};
use strata_net::{Access, RemoteSequencer, Stages};
use strata_sequencer::ClockSequencer;

use common::{Served, cluster};

const TOKEN: &str = "5f2b0c9e81d34a6f9b7e0d1c2a3b4c5d";

fn sequencer(token: Option<&str>) -> Stages {
    Stages {
        sequencer: Some(Arc::new(ClockSequencer::new(Epoch(3), Version(100)))),
        token: token.map(str::to_owned),
        ..Stages::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_with_a_token_answer_only_calls_that_carry_it() {
    let served = Served::start(sequencer(Some(TOKEN)), "t-token").await;
    let plain = Access::from(cluster("t-token"));
    let guessed = plain.clone().with_token("5f2b0c9e81d34a6f9b7e0d1c2a3b4c5e");
    for access in [plain.clone(), guessed] {
        let e = RemoteSequencer::connect(&served.address, access)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("token"), "{e}");
    }
    let with = plain.clone().with_token(TOKEN);
    let remote = RemoteSequencer::connect(&served.address, with.clone())
        .await
        .unwrap();
    assert!(remote.read_version().await.unwrap() >= Version(100));

    // The same port, serving stages without a token: the cluster id is enough again, and a
    // token carried is ignored.
    served.publish.send_replace(Arc::new(sequencer(None)));
    for access in [plain, with] {
        let remote = RemoteSequencer::connect(&served.address, access)
            .await
            .unwrap();
        assert_eq!(remote.epoch(), Epoch(3));
    }
    served.stop().await;
}
