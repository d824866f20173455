// A download user's session in the page: a token checked with GET /auth/token and kept for the tab, the selected
// product's bundle saved with it, and files (quicklooks) fetched with it on servers that ask a token for files.
const STORAGE_KEY = "landsurf-token";

// The viewer's state (`token`, `items`, `selected`), `$`, `report`, `apiUrl` and `getJson`.
export function createAccount({ state, $, report, apiUrl, getJson }) {
  state.token = window.sessionStorage.getItem(STORAGE_KEY);

  async function signIn(event) {
    if (event) event.preventDefault();
    const token = $("token").value.trim() || state.token;
    if (!token) return;
    try {
      const who = await getJson(apiUrl("auth/token"), { headers: { Authorization: `Bearer ${token}` } });
      state.token = token;
      window.sessionStorage.setItem(STORAGE_KEY, token);
      $("token").value = "";
      $("who").textContent = `Signed in: ${who.name}` + (who.expires ? `, until ${who.expires.slice(0, 10)}` : "");
      $("account").open = false;
    } catch (error) {
      signOut();
      report(`sign-in refused: ${error.message}`);
    }
  }

  function signOut() {
    state.token = null;
    window.sessionStorage.removeItem(STORAGE_KEY);
    $("who").textContent = "Sign in (downloads)";
  }

  function save(href, name) {
    const a = document.createElement("a");
    a.href = href;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
  }

  // The selected product as one zip. Signed in: fetched with the token (held in memory, then saved); otherwise a
  // plain link, which the browser streams to disk.
  async function download() {
    const item = state.items.get(state.selected);
    if (!item) return;
    const url = apiUrl(`collections/${encodeURIComponent(item.collection)}/items/${encodeURIComponent(item.id)}/bundle.zip`);
    if (!state.token) { save(url, `${item.id}.zip`); return; }
    $("download").disabled = true;
    report(`downloading ${item.id}…`);
    try {
      const response = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      const href = URL.createObjectURL(await response.blob());
      save(href, `${item.id}.zip`);
      window.setTimeout(() => URL.revokeObjectURL(href), 60_000);
      report(`${item.id}.zip saved`);
    } catch (error) {
      report(`download failed: ${error.message}`, true);
    } finally {
      $("download").disabled = false;
    }
  }

  async function showThumbnail(img, href, id) {
    try {
      const response = await fetch(href, { headers: { Authorization: `Bearer ${state.token}` } });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      const blob = await response.blob();
      if (state.selected !== id) return;
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      img.src = URL.createObjectURL(blob);
    } catch (error) {
      report(`quicklook of ${id}: ${error.message}`, true);
    }
  }

  return { signIn, signOut, download, showThumbnail };
}
