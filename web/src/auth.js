// Sign-in with Microsoft Entra ID through MSAL.js: authorization code with PKCE, by redirect to the
// authority and back to this page. Tokens stay in this tab's sessionStorage (MSAL's cache) and in memory; they
// go to the broker in the Authorization header only — never in a cookie or a URL.

import {
  BrowserCacheLocation,
  InteractionRequiredAuthError,
  LogLevel,
  PublicClientApplication,
} from "@azure/msal-browser";

export class Auth {
  constructor(config) {
    this.config = config;
    const home = `${window.location.origin}/`;
    this.msal = new PublicClientApplication({
      auth: {
        clientId: config.clientId,
        authority: config.authority,
        knownAuthorities: config.knownAuthorities,
        redirectUri: home,
        postLogoutRedirectUri: home,
      },
      cache: { cacheLocation: BrowserCacheLocation.SessionStorage },
      system: {
        loggerOptions: {
          logLevel: LogLevel.Warning,
          piiLoggingEnabled: false,
          loggerCallback: (level, message) => {
            if (level <= LogLevel.Warning) console.warn(message);
          },
        },
      },
    });
    this.account = null;
  }

  /** Initialise MSAL and finish a sign-in that just came back from the authority. */
  async start() {
    await this.msal.initialize();
    const result = await this.msal.handleRedirectPromise();
    if (result && result.account) this.msal.setActiveAccount(result.account);
    this.account = this.msal.getActiveAccount() || this.msal.getAllAccounts()[0] || null;
    if (this.account) this.msal.setActiveAccount(this.account);
    return this.account;
  }

  /** Off to the authority's sign-in page; the page comes back signed in. */
  async signIn() {
    await this.msal.loginRedirect({ scopes: this.config.scopes, prompt: "select_account" });
  }

  /** Forget this tab's tokens (the authority's own session is left as it is). */
  async signOut() {
    await this.msal.clearCache({ account: this.account || undefined });
    this.account = null;
  }

  /** A token for the broker's scope: from the cache, refreshed silently, or by signing in again. */
  async token() {
    if (!this.account) throw new Error("not signed in");
    try {
      const result = await this.msal.acquireTokenSilent({ scopes: this.config.scopes, account: this.account });
      return result.accessToken;
    } catch (error) {
      if (error instanceof InteractionRequiredAuthError) {
        await this.msal.acquireTokenRedirect({ scopes: this.config.scopes, account: this.account });
        return new Promise(() => {}); // the page is leaving for the authority
      }
      throw error;
    }
  }
}

/** Words for an MSAL failure: the authority's description when it gave one. */
export function signInProblem(error) {
  const text = (error && (error.errorMessage || error.message)) || String(error);
  return `Signing in did not work: ${text}`;
}
