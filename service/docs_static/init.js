// Starts Swagger UI on this server's OpenAPI document (a relative URL: works under a gateway's path prefix).
// An external file, not an inline script, so the page's Content-Security-Policy allows no inline code.
"use strict";
window.ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  validatorUrl: null, // the default asks a third-party validator for a badge image
});
