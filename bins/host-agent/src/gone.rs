//! Ending a response when its sandbox's VM goes away.
//!
//! A guest that vanishes (killed, paused, timed out) sends no FIN, so a
//! stream from it would wait for TCP keepalive (~25 s). [`until_gone`]
//! ends such a stream with one last item as soon as
//! [`Manager::gone`](sandbox_core::Manager::gone) says so; the JSON-exec
//! stream of `/v1` and the E2B proxy's responses both go through it.

use futures::{Stream, StreamExt as _, stream};
use sandbox_core::{Manager, State};

/// `items`, ended by a last `Err(state)` once sandbox `id`'s VM is gone
/// first; it ends as `items` does otherwise.
pub(crate) fn until_gone<S>(
    manager: Manager,
    id: String,
    items: S,
) -> impl Stream<Item = Result<S::Item, State>> + Send + 'static
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    let end = || stream::once(async { None });
    let items = items.map(|item| Some(Ok(item))).chain(end());
    let cut = stream::once(async move { manager.gone(&id).await })
        .map(|state| Some(Err(state)))
        .chain(end());
    stream::select(items, cut)
        .take_while(|item| std::future::ready(item.is_some()))
        .filter_map(std::future::ready)
}
