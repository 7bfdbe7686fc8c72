//! `runmesh node list|drain|undrain|remove|readmit`: an operator's hands on members, through any
//! node's admin API (`GET /admin/cluster`, `/admin/nodes/{id}/...`) with the admin key. The
//! decisions are replicated; the leader carries them out (gateway-node/src/admin_nodes.rs).

use serde_json::Value;

use crate::keys_cli::{AdminConn, KeysError};

#[derive(Debug, clap::Args)]
pub struct NodeCmdArgs {
    #[command(subcommand)]
    pub action: NodeCmd,
    #[command(flatten)]
    pub conn: AdminConn,
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCmd {
    /// The members, their roles, state and addresses; draining and removed nodes marked.
    List {
        /// Print the JSON of GET /admin/cluster.
        #[arg(long)]
        json: bool,
    },
    /// No new jobs go to ID (running ones finish); if it votes, its seat moves to another member.
    Drain { id: u64 },
    /// Ends a drain: ID takes jobs again and may be promoted to voter again.
    Undrain { id: u64 },
    /// Takes ID out of the membership for good; its identity cannot join again until readmitted.
    Remove { id: u64 },
    /// Lets a removed node's identity join again.
    Readmit { id: u64 },
}

pub async fn run(args: NodeCmdArgs) -> Result<(), KeysError> {
    let api = args.conn.connect()?;
    use reqwest::Method;
    let (method, path, id, what) = match &args.action {
        NodeCmd::List { json } => {
            let v = api.call(Method::GET, "/admin/cluster", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", crate::mesh::capacity::render_cluster_table(&v));
            }
            return Ok(());
        }
        NodeCmd::Drain { id } => (
            Method::POST,
            format!("/admin/nodes/{id}/drain"),
            id,
            "draining: it gets no new jobs; a voter seat it holds moves to another member",
        ),
        NodeCmd::Undrain { id } => (
            Method::POST,
            format!("/admin/nodes/{id}/undrain"),
            id,
            "no longer draining",
        ),
        NodeCmd::Remove { id } => (
            Method::DELETE,
            format!("/admin/nodes/{id}"),
            id,
            "removed: the leader takes it out of the membership; its joins are refused",
        ),
        NodeCmd::Readmit { id } => (
            Method::POST,
            format!("/admin/nodes/{id}/readmit"),
            id,
            "readmitted: it may join again",
        ),
    };
    let v: Value = api.call(method, &path, None).await?;
    let already = if v["changed"].as_bool() == Some(false) {
        " (already so)"
    } else {
        ""
    };
    println!("node {id} {what}{already}");
    Ok(())
}
