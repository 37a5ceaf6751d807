//! A consumer of the beacon stream: a durable JetStream pull consumer that prints each beacon
//! (one NDJSON line, the same shape as the files sink writes) to stdout and acknowledges it
//! after the line is written. Run several copies with the same `--durable` name and they share
//! the work; give each application its own name and each sees every beacon.
//!
//! ```text
//! cargo run --example nats-consumer -- --server nats://127.0.0.1:4222 --durable dashboards
//! cargo run --example nats-consumer -- --filter 'beacons.www_example_com' --durable shop
//! ```
//!
//! Delivery is at least once: a beacon whose ack was lost comes again. Deduplicate by the
//! `id` field (also the `Nats-Msg-Id` header) if that matters downstream.

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use clap::Parser;
use futures_util::StreamExt;
use std::io::Write;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// NATS server URL(s), comma separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// The stream (`processor.nats.stream`).
    #[arg(long, default_value = "BEACONS")]
    stream: String,
    /// Durable consumer name: the server remembers how far it got.
    #[arg(long, default_value = "example")]
    durable: String,
    /// Only subjects matching this (e.g. `beacons.www_example_com`); default all.
    #[arg(long)]
    filter: Option<String>,
    /// A .creds file to authenticate with.
    #[arg(long)]
    creds: Option<std::path::PathBuf>,
    /// Exit after this many seconds without a message (default: run until killed).
    #[arg(long)]
    exit_when_idle: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), async_nats::Error> {
    let args = Args::parse();
    let mut opts = async_nats::ConnectOptions::new().name("beacon-consumer-example");
    if let Some(creds) = &args.creds {
        opts = opts.credentials_file(creds).await?;
    }
    let servers: Vec<async_nats::ServerAddr> = args
        .server
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let client = opts.connect(servers).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.durable,
            pull::Config {
                durable_name: Some(args.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                filter_subject: args.filter.clone().unwrap_or_default(),
                // Not acknowledged within this (consumer crashed): delivered again.
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;

    let mut out = std::io::stdout().lock();
    let wait = Duration::from_secs(args.exit_when_idle.unwrap_or(5).max(1));
    loop {
        // Up to 500 messages, or whatever arrived when `wait` is over.
        let mut batch = consumer
            .batch()
            .max_messages(500)
            .expires(wait)
            .messages()
            .await?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg?;
            out.write_all(&msg.payload)?;
            out.write_all(b"\n")?;
            // Acknowledge only what is written: a crash before this means redelivery.
            out.flush()?;
            msg.ack().await?;
            got += 1;
        }
        if got == 0 && args.exit_when_idle.is_some() {
            return Ok(());
        }
    }
}
