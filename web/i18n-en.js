// English messages. Flat dotted keys, grouped by page; every key here is in
// web/i18n-zh-CN.js too, in the same section (tests/i18n_browser.rs checks
// it). `{name}` is a placeholder t() fills; a message may be plural forms
// `{ one: '…', other: '…' }` chosen by the `n` argument. Conventions:
// web/I18N.md. Pages add their keys in their own section only.

export default {
  // ------------------------------------------------------------ common
  // The page header, the language switcher, shared buttons and formats.
  'common.brand': 'medrelay',
  'common.lang.switch': 'Language',
  'common.nav.label': 'Main menu',
  'common.nav.studies': 'Studies',
  'common.nav.worklist': 'Worklist',
  'common.nav.requests': 'Consultations',
  'common.nav.broadcasts': 'Broadcasts',
  'common.nav.admin': 'Admin',
  'common.role.clinic': 'clinic',
  'common.role.expert': 'expert',
  'common.role.admin': 'admin',
  'common.logout': 'Log out',
  'common.loading': 'Loading…',
  'common.save': 'Save',
  'common.cancel': 'Cancel',
  'common.close': 'Close',
  'common.retry': 'Try again',
  'common.failed': '{what}: {error}',
  'common.dur.s': '{s} s',
  'common.dur.min': '{m} min',
  'common.dur.h_min': '{h} h {m} min',
  'common.dur.d_h': '{d} d {h} h',
  'common.bytes.b': '{n} B',
  'common.bytes.of': '{part} of {total} {unit}',
  'common.age.y': '{n} y',
  'common.age.mo': '{n} mo',
  'common.age.d': '{n} d',

  // ------------------------------------------------------------ login
  // web/login.html, web/login.js
  'login.title': 'Sign in — medrelay',
  'login.lead': 'Remote reading. Sign in with your hospital account.',
  'login.lead_next': 'Sign in to continue.',
  'login.username': 'Username',
  'login.password': 'Password',
  'login.submit': 'Sign in',
  'login.signing_in': 'Signing in…',
  'login.signed_in': 'Signed in',
  'login.wait': 'Wait {secs} s',
  'login.missing': 'Enter your username and password',

  // ------------------------------------------------------------ studies
  // web/studies.html, web/studies.js

  // ------------------------------------------------------------ worklist
  // web/worklist.html, web/worklist.js

  // ------------------------------------------------------------ viewer
  // web/viewer.html, web/viewer*.js (not the report panel)

  // ------------------------------------------------------------ report
  // web/viewer-report.js

  // ------------------------------------------------------------ requests
  // web/requests.html, web/requests.js

  // ------------------------------------------------------------ consult
  // web/consult.html, web/consult*.js

  // ------------------------------------------------------------ broadcasts
  // web/broadcasts.html, web/broadcasts.js

  // ------------------------------------------------------------ admin
  // web/admin.html, web/admin.js

  // ------------------------------------------------------------ error
  // API error codes (src/http/error.rs `Code`; the server's `code`, with
  // its `params`), then signaling codes (web/PROTOCOL.md) as error.sig.*.
  'error.generic': 'The request failed (HTTP {status})',
  'error.network': 'Cannot reach the server — check the connection',
  'error.not_found': 'Not found (it may have been removed, or is not yours to see)',
  'error.bad_request': 'The request was not accepted; check the form',
  'error.unprocessable': 'The server cannot process this data',
  'error.login_required': 'Please sign in',
  'error.forbidden': 'Not allowed',
  'error.conflict': 'Someone else changed this meanwhile; reload and try again',
  'error.login_locked': 'Too many attempts, try again in {secs} s',
  'error.rate_limited': 'Too many requests, try again in {secs} s',
  'error.busy': 'The server is busy, try again in {secs} s',
  'error.internal': 'Internal error on the server; try again later',
  'error.login_failed': 'Wrong username or password',
  'error.login_busy': 'The server is busy, try again in a moment',
  'error.session_expired': 'Your session has expired; sign in again',
  'error.csrf': 'The page is out of date; reload it and try again',
  'error.role': 'Not allowed for your role',
  'error.no_clinic': 'Your account belongs to no clinic',
  'error.bad_language': 'Unknown language',
  'error.claimed_by_other': 'This study is being read by {name}',
  'error.not_claimed': 'Claim the study first',
  'error.lease_expired': 'Your claim on this study expired; claim it again',
  'error.wrong_state': 'Not possible in the study’s current state; reload',
  'error.changed_meanwhile': 'This changed meanwhile; reload and try again',
  'error.priority_lower': 'Clinics can raise the priority, not lower it',
  'error.draft_by_other': '{name} is writing the report for this study',
  'error.not_author': 'Only the report’s author can do this',
  'error.report_empty': 'The report is empty',
  'error.report_too_long': 'The report is too long',
  'error.reason_required': 'Please give a reason',
  'error.reason_too_long': 'The text is too long (at most {max} characters)',
  'error.bad_urgency': 'Choose the urgency: STAT, urgent or routine',
  'error.too_many_studies': 'At most {max} studies per request',
  'error.patient_too_long': 'The patient’s name or ID is too long',
  'error.bad_window': 'The preferred time window ends before it starts',
  'error.schedule_required': 'Choose a date and time',
  'error.in_past': 'The time is in the past',
  'error.too_early': 'The consultation opens {mins} min before its time',
  'error.user_exists': 'An account named {name} exists already',
  'error.bad_username': 'Usernames: letters, digits, “.”, “-” and “_”',
  'error.password_short': 'The password needs at least {min} characters',
  'error.needs_clinic': 'A clinic account needs its clinic',
  'error.unknown_affiliation': 'Unknown clinic or hospital',
  'error.self_disable': 'You cannot disable your own account',
  'error.bad_title': 'Title: 1 to {max} characters',
  'error.not_a_username': '“{name}” is not a username',
  'error.named_twice': '{name} is named twice',
  'error.too_many_participants': 'At most {max} participants',
  'error.room_limit': 'No more rooms can open now; end one first or try later',
  'error.not_room_owner': 'Only the room’s owner or an admin can do this',
  'error.downloads_busy': 'Too many downloads at once, try again in {secs} s',
  'error.downloads_limited': 'Your other downloads are still running, try again in {secs} s',
  'error.sig.bad_message': 'The server did not understand a message',
  'error.sig.not_joined': 'Not in the room yet',
  'error.sig.bad_token': 'This link is not valid for your account',
  'error.sig.expired_token': 'This link has expired',
  'error.sig.session_ended': 'Your session ended; sign in again',
  'error.sig.room_full': 'The room is full',
  'error.sig.room_closed': 'The room has been closed',
  'error.sig.bad_sdp': 'The media set-up was refused',
  'error.sig.bad_state': 'The connection got out of step; reconnecting',
  'error.sig.too_many_tracks': 'Too many cameras or screens shared',
  'error.sig.not_allowed': 'Not allowed now',
  'error.sig.limit': 'A limit was reached',
  'error.sig.replaced': 'You joined this room from another tab or device',
  'error.sig.rate_limited': 'Too many actions at once; slow down',
  'error.sig.too_slow': 'The connection fell behind; reconnecting',
  'error.sig.internal': 'The media connection failed; reconnecting',
};
