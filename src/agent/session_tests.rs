//! Unit tests of the agent session: loops, tool calls, checks and the transcript.

use super::*;

#[test]
fn checks_pass_on_zero_or_on_five_with_no_tests() {
    assert!(check_passes(Some(0), "", ""));
    assert!(check_passes(Some(5), "\nno tests ran in 0.01s\n", ""));
    assert!(!check_passes(Some(5), "5 failed", ""));
    assert!(!check_passes(Some(1), "no tests", ""));
    assert!(!check_passes(None, "", ""));
}

#[test]
fn roles_alternate_and_long_text_is_clipped() {
    assert_eq!(AgentRole::of_loop(1), AgentRole::Coder);
    assert_eq!(AgentRole::of_loop(2), AgentRole::Reviewer);
    assert_eq!(AgentRole::of_loop(3), AgentRole::Coder);
    let long = "a".repeat(50) + &"b".repeat(50);
    let c = clip_middle(&long, 20);
    assert!(
        c.starts_with("aaaaaaaaaa\n… [80 characters cut] …\nbbbbbbbbbb"),
        "{c}"
    );
    assert_eq!(clip_middle("short", 20), "short");
    assert!(clip_tail(&long, 10).ends_with("\nbbbbbbbbbb"));
}

fn size(conv: &[Message]) -> usize {
    conv.iter().map(message_size).sum()
}

fn exchange(n: usize, result_len: usize) -> Vec<Message> {
    let call = ToolCall {
        id: format!("c{n}"),
        name: "read_file".into(),
        arguments: json!({"path": format!("f{n}.py")}),
    };
    let mut reply = Message::text(Role::Assistant, format!("reading f{n}"));
    reply.tool_calls = vec![call.clone()];
    vec![reply, Message::tool_result(&call, "x".repeat(result_len))]
}

#[test]
fn the_conversation_stays_within_its_budget() {
    let mut conv = vec![
        Message::text(Role::System, "system prompt"),
        Message::text(Role::User, "Task t: do it"),
    ];
    // Under the budget nothing changes.
    conv.extend(exchange(0, 1000));
    let before = conv.clone();
    assert_eq!(compact_conversation(&mut conv, 10_000, 0), 0);
    assert_eq!(conv, before);

    // Old tool results are shortened first, the newest kept.
    let mut conv = before[..2].to_vec();
    for n in 0..5 {
        conv.extend(exchange(n, 3_000));
    }
    assert_eq!(compact_conversation(&mut conv, 10_000, 0), 0);
    assert!(size(&conv) <= 10_000, "{}", size(&conv));
    assert_eq!(conv[3].content, RESULT_REMOVED);
    assert!(
        conv[5].content.contains("characters cut"),
        "{}",
        conv[5].content
    );
    assert_eq!(
        conv.last().unwrap().content.len(),
        3_000,
        "the newest result is whole"
    );

    // Many exchanges: the oldest are dropped in whole, with one note after the task.
    let mut conv = before[..2].to_vec();
    let mut dropped = 0;
    for n in 0..200 {
        conv.extend(exchange(n, 24_000));
        dropped += compact_conversation(&mut conv, 30_000, dropped);
        assert!(size(&conv) <= 30_000, "{n}: {}", size(&conv));
    }
    assert!(dropped > 0);
    assert_eq!(conv[0].content, "system prompt");
    assert_eq!(conv[1].content, "Task t: do it");
    assert!(conv[2]
        .content
        .contains(&format!("[{dropped} earlier messages were removed")));
    assert_eq!(
        conv[3].role,
        Role::Assistant,
        "no tool result without its call"
    );
    let last = &conv[conv.len() - 2];
    assert_eq!(last.tool_calls[0].id, "c199", "the last exchange is kept");
    assert_eq!(
        conv.iter().filter(|m| m.role == Role::Tool).count(),
        conv.iter().filter(|m| m.role == Role::Assistant).count()
    );
    // Huge arguments of an old call are clipped too.
    let mut conv = before[..2].to_vec();
    let mut big = exchange(0, 10);
    big[0].tool_calls[0].arguments = json!({"path": "a", "content": "y".repeat(100_000)});
    conv.extend(big);
    conv.extend(exchange(1, 10));
    compact_conversation(&mut conv, 5_000, 0);
    assert!(size(&conv) <= 5_000, "{}", size(&conv));
}

#[test]
fn the_recorded_transcript_is_bounded() {
    let mut t = Transcript::default();
    t.record(json!({"role": "system", "content": "s"}));
    t.record(json!({"role": "user", "content": "task"}));
    for _ in 0..1000 {
        t.record(json!({"role": "tool", "content": "z".repeat(MAX_RECORDED_CHARS)}));
    }
    assert!(t.messages.len() <= MAX_RECORDED_MESSAGES);
    let total: usize = t.messages.iter().map(|m| m.to_string().len()).sum();
    assert!(total <= MAX_RECORDED_TOTAL_CHARS, "{total}");
    assert_eq!(t.messages[1]["content"], "task");
    assert_eq!(t.messages_omitted + t.messages.len(), 1002);
}
