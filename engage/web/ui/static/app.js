// engage: small enhancements over server-rendered pages; every page works without them.
(function () {
  "use strict";

  // Forms marked data-autosubmit apply a changed control at once.
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.addEventListener("change", function () { form.requestSubmit ? form.requestSubmit() : form.submit(); });
  });

  // The calendar: while audience estimates are being counted, fetch the page
  // again and swap in the calendar until none is pending.
  var cal = document.getElementById("calendar");
  if (!cal || cal.getAttribute("data-pending") === "0") { return; }
  var tries = 0;
  function poll() {
    tries += 1;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("calendar");
        if (!fresh) { return; }
        cal.replaceWith(fresh);
        cal = fresh;
        if (fresh.getAttribute("data-pending") !== "0" && tries < 120) { setTimeout(poll, 2500); }
      })
      .catch(function () { if (tries < 120) { setTimeout(poll, 5000); } });
  }
  setTimeout(poll, 2000);
})();
