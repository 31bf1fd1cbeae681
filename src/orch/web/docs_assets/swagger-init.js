// Starts Swagger UI on /docs. It is a file of the package rather than an inline script so that
// the page's Content-Security-Policy can allow scripts from this site alone.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // the public validator would be asked about this document: nothing leaves this site
    validatorUrl: null,
    // a token typed into "Authorize" is kept in this page only, never in the browser's storage
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
  });
})();
