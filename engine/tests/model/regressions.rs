//! Counterexamples the model test found, each pinned as it was shrunk.

use crate::run::run_case;
use crate::run::Op::{self, *};
use presync_engine::Availability::{self, *};

fn change(sys: usize, rep: usize, a: Availability) -> Op {
    Change { sys, rep, a }
}

#[test]
fn a_reconcile_never_writes_to_a_system_it_could_not_read() {
    run_case(2, 2, vec![Fault { sys: 0, kind: 0 }, Deliver { pick: 0 }]);
}

#[test]
fn a_reconcile_read_equal_to_the_last_observation_still_checks_for_drift() {
    let ops = vec![
        change(2, 0, Away),
        change(2, 0, Available),
        change(1, 0, Away),
        Deliver {
            pick: 5120845828247626232,
        },
    ];
    run_case(2, 1, ops);
}

#[test]
fn an_echo_seen_by_a_reconcile_then_delivered_by_webhook_is_not_propagated() {
    let ops = vec![
        change(0, 0, Available),
        Deliver { pick: 0 },
        Resolve,
        change(0, 0, Busy),
        Dispatch,
        Reconcile,
        change(0, 0, Available),
    ];
    run_case(3, 2, ops);
}

#[test]
fn agreement_makes_the_newer_system_the_source() {
    let ops = vec![
        change(2, 0, Away),
        Deliver { pick: 0 },
        change(2, 0, Available),
        change(1, 0, Away),
        Deliver {
            pick: 7653567911732317511,
        },
    ];
    run_case(2, 1, ops);
}

#[test]
fn a_persons_change_after_a_newer_write_is_not_a_late_echo() {
    let ops = vec![
        change(2, 0, DoNotDisturb),
        Deliver { pick: 0 },
        change(1, 0, Busy),
        change(0, 0, Available),
        change(0, 0, Available),
        change(2, 0, Available),
        Resolve,
        change(2, 0, Busy),
        Dispatch,
        Deliver {
            pick: 4656079897494956126,
        },
    ];
    run_case(2, 1, ops);
}

#[test]
fn a_write_of_unknown_outcome_completes_when_its_attempt_returns() {
    let ops = vec![
        change(1, 0, Available),
        Fault { sys: 0, kind: 2 },
        Deliver { pick: 0 },
        change(1, 0, Offline),
        Deliver { pick: 0 },
        Resolve,
        Dispatch,
        change(2, 0, Available),
        change(0, 0, Offline),
    ];
    run_case(2, 1, ops);
}

#[test]
fn an_agreement_overwritten_by_presync_still_advances_the_timestamp() {
    let ops = vec![
        change(0, 0, DoNotDisturb),
        Deliver { pick: 0 },
        change(1, 0, Offline),
        change(0, 1, Available),
        Deliver { pick: 0 },
        Reconcile,
        change(2, 0, Busy),
        change(0, 0, DoNotDisturb),
        change(1, 0, Busy),
        Deliver {
            pick: 3224166980991949965,
        },
        Dispatch,
        change(0, 1, Busy),
        Deliver {
            pick: 7857038282911714241,
        },
    ];
    run_case(2, 2, ops);
}

#[test]
fn a_lost_change_still_visible_to_a_reconcile_is_recovered() {
    let ops = vec![
        change(2, 0, Busy),
        Deliver { pick: 0 },
        change(0, 0, Available),
        change(0, 0, Busy),
        Resolve,
        Lose {
            pick: 6856513989643987,
        },
        Dispatch,
        Reconcile,
    ];
    run_case(3, 2, ops);
}

#[test]
fn a_reconcile_whose_reads_fail_is_retried_until_every_system_is_read() {
    let ops = vec![
        change(2, 1, Available),
        Deliver { pick: 0 },
        Fault { sys: 2, kind: 0 },
        change(0, 0, Available),
        change(2, 0, DoNotDisturb),
        change(0, 0, Available),
        change(2, 1, Busy),
        Lose {
            pick: 2871056115490365898,
        },
        Fault { sys: 2, kind: 0 },
    ];
    run_case(2, 2, ops);
}

#[test]
fn a_reconcile_replaces_an_older_write_queued_for_an_unread_system() {
    let ops = vec![
        change(2, 1, Available),
        Deliver { pick: 0 },
        change(2, 1, Busy),
        Reconcile,
        change(2, 0, Available),
        Deliver {
            pick: 3588922186592392615,
        },
        Resolve,
        Deliver { pick: 0 },
        Dispatch,
        Lose {
            pick: 11202313742419736144,
        },
        change(0, 0, Busy),
    ];
    run_case(2, 2, ops);
}

#[test]
fn a_reconcile_read_of_presyncs_own_write_does_not_advance_the_watermark() {
    let ops = vec![
        change(0, 0, Available),
        Deliver { pick: 0 },
        change(0, 0, Busy),
        change(1, 0, DoNotDisturb),
        Resolve,
        Dispatch,
        Deliver {
            pick: 3873505141387150018,
        },
        Deliver {
            pick: 3847583497945004108,
        },
        Reconcile,
    ];
    run_case(3, 1, ops);
}

#[test]
fn a_completed_write_that_did_not_stick_does_not_block_drift_repair() {
    let ops = vec![
        change(2, 0, Available),
        change(0, 0, Offline),
        Lose {
            pick: 3309560339075492406,
        },
        Deliver { pick: 0 },
        change(2, 0, Available),
        change(0, 0, Available),
        Resolve,
        Dispatch,
        Reconcile,
        Deliver { pick: 0 },
    ];
    run_case(2, 2, ops);
}

#[test]
fn a_reconcile_feeds_a_state_set_again_after_a_lost_delivery() {
    let ops = vec![
        change(0, 0, Away),
        Reconcile,
        change(0, 0, Available),
        change(1, 0, Busy),
        change(0, 0, Away),
        Lose {
            pick: 7949854563369309731,
        },
        Reconcile,
        Deliver { pick: 0 },
    ];
    run_case(3, 1, ops);
}

#[test]
fn a_persons_change_just_before_a_write_of_the_same_state_is_theirs() {
    let ops = vec![
        Fault { sys: 1, kind: 2 },
        change(0, 0, Available),
        change(0, 0, Available),
        change(2, 0, Busy),
        change(0, 0, Available),
        Deliver { pick: 0 },
        change(1, 0, Available),
        Resolve,
        Dispatch,
    ];
    run_case(3, 1, ops);
}

/// The two systems of the Teams-like runs: D365-like (overwrites), Teams-like (presync only
/// contributes a session).
fn teams_like(ops: Vec<Op>) {
    crate::run::run_systems(
        vec![
            presync_engine::connector::WriteSemantics::Overwrite,
            presync_engine::connector::WriteSemantics::Contribution,
        ],
        1,
        ops,
    );
}

/// presync's Do not disturb session lies over the person's own in the Teams-like system; the
/// person chooses Busy as their status there, which beats every session. Busy cannot show
/// through presync's Do not disturb: it is the person's choice, not something presync's
/// contribution reveals.
#[test]
fn a_status_chosen_beneath_presyncs_higher_session_is_news() {
    let ops = vec![
        change(0, 0, DoNotDisturb),
        Reconcile,
        Dispatch,
        Lose {
            pick: 1871721361283239397,
        },
        change(0, 0, Available),
        Prefer {
            sys: 1,
            rep: 0,
            a: Some(Busy),
        },
    ];
    teams_like(ops);
}

/// The person chose Busy as their status in the Teams-like system, over presync's Available
/// session, then reset it: what shows now is presync's part. Their Busy is over (from a state
/// that showed over presync's part, any change shows): it is not taken for something presync's
/// write revealed.
#[test]
fn resetting_a_status_that_lay_over_presyncs_part_ends_it() {
    let ops = vec![
        change(0, 1, Available),
        Deliver { pick: 0 },
        Prefer {
            sys: 1,
            rep: 1,
            a: Some(Busy),
        },
        Resolve,
        change(0, 0, Available),
        Dispatch,
        change(0, 0, Available),
        Prefer {
            sys: 1,
            rep: 1,
            a: None,
        },
        Duplicate {
            pick: 2196305270986863168,
        },
    ];
    crate::run::run_systems(
        vec![
            presync_engine::connector::WriteSemantics::Overwrite,
            presync_engine::connector::WriteSemantics::Contribution,
        ],
        2,
        ops,
    );
}

/// The person sets the very state presync is about to write to the Teams-like system: presync
/// may take it for its own write's effect (the README's one ambiguity), and D365's newer Busy
/// then stands.
#[test]
fn a_person_setting_the_state_presync_is_writing_may_be_taken_for_its_write() {
    teams_like(vec![
        change(0, 0, Available),
        Reconcile,
        change(0, 0, Busy),
        change(1, 0, Available),
        Dispatch,
    ]);
}

/// D365 signs the person out while presync's Available session is in Teams; presync
/// withdraws it, and while the withdrawal is on the wire the person chooses Away there. presync
/// cannot tell that Away from one the withdrawal revealed: D365's Offline may stand.
#[test]
fn a_status_chosen_while_presyncs_withdrawal_is_on_the_wire_may_be_taken_for_a_reveal() {
    teams_like(vec![
        change(0, 0, Available),
        change(2, 0, Available),
        Deliver { pick: 0 },
        Resolve,
        Dispatch,
        change(2, 0, Offline),
        Reconcile,
        Prefer {
            sys: 1,
            rep: 0,
            a: Some(Away),
        },
        Dispatch,
    ]);
}

/// The person chose Offline as their status in the Teams-like system, over presync's
/// Available session; presync withdrew its session, and the person then chose Away. From a
/// status that showed over presync's part, that change is theirs, not a reveal: it is newer than
/// D365's Offline and wins.
#[test]
fn a_status_chosen_after_one_that_showed_over_presyncs_part_is_news() {
    teams_like(vec![
        Prefer {
            sys: 1,
            rep: 0,
            a: Some(Offline),
        },
        change(0, 0, Available),
        Deliver { pick: 0 },
        Resolve,
        Dispatch,
        change(0, 0, Offline),
        Reconcile,
        Dispatch,
        Prefer {
            sys: 1,
            rep: 0,
            a: Some(Away),
        },
    ]);
}

/// The person is Busy in the Teams-like system, which wins over D365's Do not disturb, so
/// presync withdraws its session there; beneath it, meanwhile, they set Available. What the
/// withdrawal shows is theirs and newer than their Busy: the canonical state follows it.
#[test]
fn what_presyncs_withdrawal_at_the_source_shows_is_the_persons_own() {
    crate::run::run_systems(
        vec![
            presync_engine::connector::WriteSemantics::Overwrite,
            presync_engine::connector::WriteSemantics::Contribution,
        ],
        2,
        vec![
            change(2, 1, DoNotDisturb),
            Deliver { pick: 0 },
            change(1, 1, Busy),
            Resolve,
            Dispatch,
            change(1, 1, Available),
        ],
    );
}

/// The person's Busy status in the Teams-like system, reset (Offline there), then Busy in a
/// session; presync's confirming read sees Busy before the reset's delivery arrives and takes
/// it for what its own part revealed. The late reset proves the person changed in between:
/// their later Busy is their change and wins.
#[test]
fn a_late_change_unmasks_a_state_taken_for_a_reveal() {
    teams_like(vec![
        Prefer {
            sys: 1,
            rep: 0,
            a: Some(Busy),
        },
        change(0, 0, Available),
        Deliver { pick: 0 },
        Deliver { pick: 0 },
        Prefer {
            sys: 1,
            rep: 0,
            a: None,
        },
        Resolve,
        change(1, 0, Busy),
        Dispatch,
    ]);
}
