// 简体中文 (the alliance's default language). Same keys, same sections, as
// web/i18n-en.js (tests/i18n_browser.rs checks it). Medical terms as
// Chinese radiologists use them: 检查 (study), 影像 (images), 报告, 阅片,
// 会诊, 远程诊断, 急诊/STAT, 加急, 退回补充影像. Latin abbreviations
// radiologists use as they are (CT, MR, DICOM…) stay Latin. Conventions:
// web/I18N.md. Pages add their keys in their own section only.

export default {
  // ------------------------------------------------------------ common
  // The page header, the language switcher, shared buttons and formats.
  'common.brand': 'medrelay',
  'common.lang.switch': '界面语言',
  'common.nav.label': '主菜单',
  'common.nav.studies': '检查',
  'common.nav.worklist': '阅片列表',
  'common.nav.requests': '会诊',
  'common.nav.broadcasts': '直播教学',
  'common.nav.admin': '系统管理',
  'common.role.clinic': '基层医生',
  'common.role.expert': '专家',
  'common.role.admin': '管理员',
  'common.logout': '退出登录',
  'common.loading': '正在加载…',
  'common.save': '保存',
  'common.cancel': '取消',
  'common.close': '关闭',
  'common.retry': '重试',
  'common.failed': '{what}：{error}',
  'common.dur.s': '{s} 秒',
  'common.dur.min': '{m} 分钟',
  'common.dur.h_min': '{h} 小时 {m} 分钟',
  'common.dur.d_h': '{d} 天 {h} 小时',
  'common.bytes.b': '{n} 字节',
  'common.bytes.of': '{part} / {total} {unit}',
  'common.age.y': '{n} 岁',
  'common.age.mo': '{n} 个月',
  'common.age.d': '{n} 天',

  // ------------------------------------------------------------ login
  // web/login.html, web/login.js
  'login.title': '登录 — medrelay',
  'login.lead': '远程影像诊断平台。请使用医院账号登录。',
  'login.lead_next': '请登录后继续。',
  'login.username': '用户名',
  'login.password': '密码',
  'login.submit': '登录',
  'login.signing_in': '正在登录…',
  'login.signed_in': '已登录',
  'login.wait': '请等待 {secs} 秒',
  'login.missing': '请输入用户名和密码',

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
  'error.generic': '请求失败（HTTP {status}）',
  'error.network': '无法连接服务器，请检查网络连接',
  'error.not_found': '未找到（可能已被删除，或您无权查看）',
  'error.bad_request': '请求未被接受，请检查填写的内容',
  'error.unprocessable': '服务器无法处理该数据',
  'error.login_required': '请先登录',
  'error.forbidden': '无权操作',
  'error.conflict': '他人已修改此内容，请刷新后重试',
  'error.login_locked': '尝试次数过多，请 {secs} 秒后再试',
  'error.rate_limited': '请求过于频繁，请 {secs} 秒后再试',
  'error.busy': '服务器繁忙，请 {secs} 秒后再试',
  'error.internal': '服务器内部错误，请稍后再试',
  'error.login_failed': '用户名或密码错误',
  'error.login_busy': '服务器繁忙，请稍后再试',
  'error.session_expired': '登录已过期，请重新登录',
  'error.csrf': '页面已过期，请刷新后重试',
  'error.role': '您的角色无权进行此操作',
  'error.no_clinic': '您的账号未关联基层医疗机构',
  'error.bad_language': '不支持该语言',
  'error.claimed_by_other': '该检查正由 {name} 阅片',
  'error.not_claimed': '请先领取该检查',
  'error.lease_expired': '您对该检查的领取已过期，请重新领取',
  'error.wrong_state': '该检查当前状态下无法进行此操作，请刷新',
  'error.changed_meanwhile': '内容已被他人修改，请刷新后重试',
  'error.priority_lower': '基层医疗机构只能提高优先级，不能降低',
  'error.draft_by_other': '{name} 正在书写该检查的报告',
  'error.not_author': '只有报告医生本人可以进行此操作',
  'error.report_empty': '报告内容为空',
  'error.report_too_long': '报告内容过长',
  'error.reason_required': '请填写原因',
  'error.reason_too_long': '内容过长（最多 {max} 个字符）',
  'error.bad_urgency': '请选择紧急程度：急诊、加急或常规',
  'error.too_many_studies': '每次申请最多 {max} 个检查',
  'error.patient_too_long': '患者姓名或 ID 过长',
  'error.bad_window': '期望时间段的结束时间早于开始时间',
  'error.schedule_required': '请选择日期和时间',
  'error.in_past': '所选时间已过去',
  'error.too_early': '会诊在预定时间前 {mins} 分钟开放',
  'error.user_exists': '账号 {name} 已存在',
  'error.bad_username': '用户名只能包含字母、数字以及“.”“-”“_”',
  'error.password_short': '密码至少需要 {min} 个字符',
  'error.needs_clinic': '基层医生账号必须指定所属医疗机构',
  'error.unknown_affiliation': '未知的医疗机构或医院',
  'error.self_disable': '不能停用您自己的账号',
  'error.bad_title': '标题：1 至 {max} 个字符',
  'error.not_a_username': '“{name}”不是有效的用户名',
  'error.named_twice': '{name} 被重复添加',
  'error.too_many_participants': '最多 {max} 位参与者',
  'error.room_limit': '当前无法再开启房间，请先结束一个或稍后再试',
  'error.not_room_owner': '只有房间创建者或管理员可以进行此操作',
  'error.downloads_busy': '同时下载的人数过多，请 {secs} 秒后再试',
  'error.downloads_limited': '您的其他下载仍在进行，请 {secs} 秒后再试',
  'error.sig.bad_message': '服务器无法识别该消息',
  'error.sig.not_joined': '尚未进入房间',
  'error.sig.bad_token': '该链接对您的账号无效',
  'error.sig.expired_token': '该链接已过期',
  'error.sig.session_ended': '登录已结束，请重新登录',
  'error.sig.room_full': '房间已满',
  'error.sig.room_closed': '房间已关闭',
  'error.sig.bad_sdp': '音视频协商被拒绝',
  'error.sig.bad_state': '连接状态异常，正在重新连接',
  'error.sig.too_many_tracks': '共享的摄像头或屏幕过多',
  'error.sig.not_allowed': '当前不允许此操作',
  'error.sig.limit': '已达到上限',
  'error.sig.replaced': '您已在其他标签页或设备上进入该房间',
  'error.sig.rate_limited': '操作过于频繁，请稍候',
  'error.sig.too_slow': '连接跟不上，正在重新连接',
  'error.sig.internal': '音视频连接失败，正在重新连接',
};
