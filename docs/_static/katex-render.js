// Typesets the maths Sphinx writes as \( ... \) and \[ ... \] inside
// elements of class "math", with the vendored KaTeX (no network).
document.addEventListener('DOMContentLoaded', function () {
  var options = {
    delimiters: [
      {left: '\\[', right: '\\]', display: true},
      {left: '\\(', right: '\\)', display: false},
    ],
    throwOnError: false,
  };
  document.querySelectorAll('.math').forEach(function (el) {
    renderMathInElement(el, options);
  });
});
