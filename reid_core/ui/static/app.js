// The search page's few behaviours: follow an index build, search with an uploaded photo.
"use strict";

function followJob(box) {
  const bar = box.querySelector("progress");
  const text = box.querySelector(".progress-text");
  const error = box.querySelector(".message");
  const poll = async () => {
    const answer = await fetch(box.dataset.url, { cache: "no-store" });
    const job = await answer.json();
    if (job.state === "done") { location.reload(); return; }
    if (job.state === "failed") {
      error.textContent = "The index could not be built: " + job.message;
      error.hidden = false;
      return;
    }
    if (job.total) { bar.max = job.total; bar.value = job.done; }
    text.textContent = job.done + " / " + (job.total || "?") + " images, " + job.seconds + " s";
    setTimeout(poll, 500);
  };
  poll();
}

async function searchUpload(file) {
  const form = document.getElementById("search-form");
  const params = new URLSearchParams(new FormData(form));
  params.delete("query");
  const results = document.getElementById("results");
  const busy = document.getElementById("busy");
  const slow = setTimeout(() => { busy.hidden = false; }, 1000);  // only for a slow search
  try {
    const answer = await fetch("/api/search?" + params, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    results.innerHTML = await answer.text();  // the server's own escaped HTML
  } catch (err) {
    results.textContent = "The search failed: " + err;
  } finally {
    clearTimeout(slow);
    busy.hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (job) followJob(job);
  const input = document.getElementById("upload");
  const zone = document.getElementById("dropzone");
  if (!input || !zone) return;
  input.addEventListener("change", () => { if (input.files.length) searchUpload(input.files[0]); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (!input.disabled && e.dataTransfer.files.length) searchUpload(e.dataTransfer.files[0]);
  });
});
