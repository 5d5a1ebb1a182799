// callq dashboard: confirm destructive actions; optional auto refresh (own code, no libraries).
document.addEventListener("submit", function (ev) {
  var msg = ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) { ev.preventDefault(); }
});
(function () {
  var box = document.getElementById("autorefresh");
  if (!box) { return; }
  box.checked = window.localStorage.getItem("callq-autorefresh") === "1";
  box.addEventListener("change", function () {
    window.localStorage.setItem("callq-autorefresh", box.checked ? "1" : "0");
  });
  setInterval(function () { if (box.checked) { window.location.reload(); } }, 5000);
})();
