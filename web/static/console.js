// Sigil web console: WebAuthn ceremonies, copy buttons, confirmations and
// live updates. Plain JavaScript, no build step; the page's CSP allows
// only this file to run.
"use strict";

(function () {
  function b64urlToBuf(s) {
    s = s.replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function bufToB64url(buf) {
    const bytes = new Uint8Array(buf);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // postJSON sends body with the page's CSRF token and returns the JSON
  // answer, throwing its error message on failure.
  async function postJSON(url, csrf, body) {
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await resp.json(); } catch (e) { /* empty answer */ }
    if (!resp.ok) throw new Error(data.error || ("request failed (" + resp.status + ")"));
    return data;
  }

  function creationOptions(json) {
    const pk = JSON.parse(json).publicKey;
    pk.challenge = b64urlToBuf(pk.challenge);
    pk.user.id = b64urlToBuf(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    return { publicKey: pk };
  }

  function requestOptions(json) {
    const pk = JSON.parse(json).publicKey;
    pk.challenge = b64urlToBuf(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = b64urlToBuf(c.id); });
    return { publicKey: pk };
  }

  async function assert(optionsJSON) {
    const cred = await navigator.credentials.get(requestOptions(optionsJSON));
    return {
      id: cred.id,
      rawId: bufToB64url(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: bufToB64url(cred.response.authenticatorData),
        clientDataJSON: bufToB64url(cred.response.clientDataJSON),
        signature: bufToB64url(cred.response.signature),
        userHandle: cred.response.userHandle ? bufToB64url(cred.response.userHandle) : undefined,
      },
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  async function create(optionsJSON) {
    const cred = await navigator.credentials.create(creationOptions(optionsJSON));
    return {
      id: cred.id,
      rawId: bufToB64url(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: bufToB64url(cred.response.attestationObject),
        clientDataJSON: bufToB64url(cred.response.clientDataJSON),
        transports: cred.response.getTransports ? cred.response.getTransports() : [],
      },
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  function explain(err) {
    if (err && err.name === "NotAllowedError") return "The security key was not used (cancelled or timed out). Try again.";
    if (err && err.name === "InvalidStateError") return "This security key is registered already.";
    if (err && err.name === "SecurityError") return "Security keys only work on the console's DNS name (e.g. https://localhost:PORT).";
    return (err && err.message) || String(err);
  }

  // keyProof approves a check with an existing key (adding a device, or
  // reviewing an access request) and returns the challenge id to send.
  async function keyProof(csrf, status, url) {
    status.textContent = "Touch your security key to confirm…";
    const ch = await postJSON(url || "/web/devices/proof", csrf, {});
    await postJSON("/web/mfa/" + encodeURIComponent(ch.challenge_id) + "/verify", csrf, await assert(ch.options));
    return ch.challenge_id;
  }

  function setupWebAuthn(el) {
    const button = el.querySelector("[data-action=webauthn]");
    const status = el.querySelector(".status") || document.createElement("p");
    const csrf = el.dataset.csrf;
    const field = function (name) {
      const f = el.querySelector("[data-field=" + name + "]");
      return f ? f.value.trim() : "";
    };
    let busy = false;
    async function run() {
      if (busy) return;
      if (!window.PublicKeyCredential) {
        status.textContent = "This browser does not support security keys (WebAuthn).";
        status.classList.add("error");
        return;
      }
      busy = true;
      if (button) button.disabled = true;
      status.classList.remove("error");
      try {
        if (el.dataset.webauthn === "assert") {
          status.textContent = "Touch your security key…";
          await postJSON(el.dataset.verify, csrf, await assert(el.dataset.options));
          status.textContent = "Approved.";
          if (el.dataset.submit) {
            document.getElementById(el.dataset.submit).submit();
            return;
          }
        } else {
          let id = el.dataset.registration, options = el.dataset.options;
          if (!id) {
            const name = field("name");
            if (!name) throw new Error("Give the key a name first.");
            let proofCode = field("proof_code"), proofChallenge = "";
            if (el.dataset.proofKey && !proofCode) proofChallenge = await keyProof(csrf, status);
            const begun = await postJSON(el.dataset.begin, csrf, { name: name, proof_code: proofCode, proof_challenge: proofChallenge });
            id = begun.registration_id;
            options = begun.options;
          }
          status.textContent = "Touch the new security key…";
          await postJSON(el.dataset.finish, csrf, { registration_id: id, response: await create(options) });
          status.textContent = "Registered.";
          if (el.dataset.reload) {
            window.location.reload();
            return;
          }
        }
        if (el.dataset.done) {
          el.classList.add("hidden");
          document.getElementById(el.dataset.done).classList.remove("hidden");
        }
      } catch (err) {
        status.textContent = explain(err);
        status.classList.add("error");
      } finally {
        busy = false;
        if (button) button.disabled = false;
      }
    }
    if (button) button.addEventListener("click", run);
    if (el.dataset.autostart) run();
  }

  // A form that needs an MFA check from an existing key gets it first
  // when no code was typed.
  function setupProofForm(form) {
    form.addEventListener("submit", async function (ev) {
      const code = form.querySelector("[name=" + (form.dataset.codeField || "proof_code") + "]");
      const hidden = form.querySelector("[name=" + (form.dataset.proofField || "proof_challenge") + "]");
      if ((code && code.value.trim()) || hidden.value) return;
      ev.preventDefault();
      // form.submit() sends no button: keep the one that was pressed.
      if (ev.submitter && ev.submitter.name) {
        const keep = document.createElement("input");
        keep.type = "hidden";
        keep.name = ev.submitter.name;
        keep.value = ev.submitter.value;
        form.appendChild(keep);
      }
      let status = form.querySelector(".status");
      if (!status) {
        status = document.createElement("span");
        status.className = "status hint";
        form.appendChild(status);
      }
      try {
        hidden.value = await keyProof(form.dataset.csrf, status, form.dataset.proofUrl);
        form.submit();
      } catch (err) {
        status.textContent = explain(err);
        status.classList.add("error");
      }
    });
  }

  function setupCopy(button) {
    button.addEventListener("click", async function () {
      const text = button.dataset.copy;
      try {
        await navigator.clipboard.writeText(text);
      } catch (e) {
        const code = button.parentElement.querySelector("code");
        if (code) window.getSelection().selectAllChildren(code);
        return;
      }
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(function () { button.textContent = "Copy"; button.classList.remove("copied"); }, 1500);
    });
  }

  function setupLive(el) {
    const every = parseInt(el.dataset.every || "5000", 10);
    const toggle = el.dataset.toggle ? document.getElementById(el.dataset.toggle) : null;
    async function refresh() {
      if (document.hidden || (toggle && !toggle.checked)) return;
      try {
        const resp = await fetch(el.dataset.live, { credentials: "same-origin", headers: { "Accept": "text/html" } });
        if (!resp.ok || resp.redirected) return;
        const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
        el.replaceChildren.apply(el, Array.from(doc.body.childNodes));
        el.querySelectorAll("[data-copy]").forEach(setupCopy);
        el.querySelectorAll("form[data-confirm]").forEach(setupConfirm);
      } catch (e) { /* next round */ }
    }
    setInterval(refresh, every);
    if (toggle) toggle.addEventListener("change", refresh);
  }

  function setupConfirm(form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-webauthn]").forEach(setupWebAuthn);
    document.querySelectorAll("form[data-proof-key]").forEach(setupProofForm);
    document.querySelectorAll("[data-copy]").forEach(setupCopy);
    document.querySelectorAll("[data-live]").forEach(setupLive);
    document.querySelectorAll("form[data-confirm]").forEach(setupConfirm);
  });
})();
