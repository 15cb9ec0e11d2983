"""The Dynamic CoT elements' labels in LlamaBoard's five languages, as entries of its ``LOCALES`` table.

LlamaBoard relabels every element on a language change by ``LOCALES[name][lang]`` (a missing language raises), so
every element the plugin adds has an entry with every language of ``LOCALES["lang"]``. A key without a translated
label below (one added to :class:`~dyncot_plugin.config.DynCotArguments` later) is labelled with its key name in every
language; help texts are the first sentence of the keys' English documentation
(:data:`~dyncot_plugin.config.FIELD_DOCS`) in every language.
"""

from __future__ import annotations

from typing import Any

from dyncot_plugin.webui.fields import TAB_FIELDS

LANGUAGES = ("en", "ru", "zh", "ko", "ja")
"""LlamaBoard 0.9.5's languages (``LOCALES["lang"]``); :func:`entries` takes the table's own list when given."""

LABELS: dict[str, tuple[str, str, str, str, str]] = {  # element name -> (en, ru, zh, ko, ja)
    "dyncot_tab": ("Dynamic CoT", "Динамический CoT", "动态思维链（Dynamic CoT）", "동적 CoT", "動的 CoT"),
    "dyncot_help": ("Help: every Dynamic CoT key", "Справка: все ключи Dynamic CoT", "帮助：全部 Dynamic CoT 参数",
                    "도움말: 모든 Dynamic CoT 키", "ヘルプ：Dynamic CoT の全キー"),
    "dyncot_strategy": ("Strategy", "Стратегия", "训练策略", "전략", "戦略"),
    "dyncot_gamma": ("γ (loss threshold)", "γ (порог потерь)", "γ（损失阈值）", "γ (손실 임계값)", "γ（損失しきい値）"),
    "dyncot_target_cot_ratio": ("Target CoT share", "Целевая доля CoT", "目标 CoT 比例", "목표 CoT 비율",
                                "目標 CoT 比率"),
    "dyncot_target_window": ("Target-share window (rows)", "Окно целевой доли (строки)", "目标比例窗口（行）",
                             "목표 비율 창 (행)", "目標比率ウィンドウ（行）"),
    "dyncot_cot_when": ("CoT side of γ", "Сторона γ для CoT", "CoT 所在的 γ 一侧", "CoT를 택하는 γ 쪽",
                        "CoT を選ぶ γ の側"),
    "dyncot_cot_mismatch": ("CoT answer mismatch", "Несовпадение ответа CoT", "CoT 答案不一致时", "CoT 답 불일치 시",
                            "CoT の答えが不一致のとき"),
    "dyncot_missing_cot": ("Samples without CoT", "Примеры без CoT", "缺少 CoT 的样本", "CoT 없는 샘플",
                           "CoT のないサンプル"),
    "dyncot_eval_samples": ("Generation eval samples", "Примеры для оценки генерацией", "生成评估样本数",
                            "생성 평가 샘플 수", "生成評価のサンプル数"),
    "dyncot_eval_max_new_tokens": ("Generation eval max new tokens", "Макс. новых токенов при оценке",
                                   "生成评估最大新 token 数", "생성 평가 최대 새 토큰 수", "生成評価の最大新規トークン数"),
    "dyncot_eval_task": ("Generation eval task", "Задача оценки генерацией", "生成评估任务", "생성 평가 작업",
                         "生成評価タスク"),
    "dyncot_think": ("Think mode", "Режим рассуждения", "思考模式", "사고 모드", "思考モード"),
    "dyncot_think_threshold": ("Think threshold (think_prob)", "Порог рассуждения (think_prob)",
                               "思考阈值（think_prob）", "사고 임계값 (think_prob)", "思考しきい値（think_prob）"),
    "dyncot_log_selection": ("Log every selection", "Записывать каждый выбор", "记录每次选择", "모든 선택 기록",
                             "すべての選択を記録"),
    "dyncot_reuse_image_features": ("Reuse image features", "Повторно использовать признаки изображений",
                                    "复用图像特征", "이미지 특징 재사용", "画像特徴を再利用"),
    "dyncot_plot": ("CoT share and γ", "Доля CoT и γ", "CoT 比例与 γ", "CoT 비율과 γ", "CoT 比率と γ"),
    "dyncot_predict_think": ("Think mode (Dynamic CoT)", "Режим рассуждения (Dynamic CoT)", "思考模式（Dynamic CoT）",
                             "사고 모드 (Dynamic CoT)", "思考モード（Dynamic CoT）"),
    "dyncot_predict_think_threshold": ("Think threshold (think_prob)", "Порог рассуждения (think_prob)",
                                       "思考阈值（think_prob）", "사고 임계값 (think_prob)", "思考しきい値（think_prob）"),
    "dyncot_chat_think": ("Think mode (Dynamic CoT)", "Режим рассуждения (Dynamic CoT)", "思考模式（Dynamic CoT）",
                          "사고 모드 (Dynamic CoT)", "思考モード（Dynamic CoT）"),
    "dyncot_chat_think_threshold": ("Think threshold (think_prob)", "Порог рассуждения (think_prob)",
                                    "思考阈值（think_prob）", "사고 임계값 (think_prob)", "思考しきい値（think_prob）"),
}
INFO: dict[str, str] = {
    "dyncot_tab": "",
    "dyncot_help": "",
    "dyncot_plot": "",
}
"""Help texts of the elements that are not form fields (none: two groups and a plot)."""


def entries(languages: tuple[str, ...] = LANGUAGES) -> dict[str, dict[str, dict[str, Any]]]:
    """``LOCALES`` entries of every element the plugin adds: name -> language -> ``{"label", "info"}``."""
    helps = {f.name: f.summary for fields in TAB_FIELDS.values() for f in fields}
    names = list(dict.fromkeys([*INFO, *helps]))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        labels = LABELS.get(name)
        per_language = {}
        for lang in languages:
            label = labels[LANGUAGES.index(lang)] if labels and lang in LANGUAGES else (labels[0] if labels else name)
            entry = {"label": label}
            if helps.get(name):
                entry["info"] = helps[name]
            per_language[lang] = entry
        out[name] = per_language
    return out


def add_to(locales: dict[str, Any]) -> None:
    """Add the plugin's entries to LlamaBoard's ``LOCALES`` (idempotent; LlamaBoard's own entries are kept)."""
    languages = tuple(locales.get("lang", {})) or LANGUAGES
    for name, entry in entries(languages).items():
        locales.setdefault(name, entry)


__all__ = ["INFO", "LABELS", "LANGUAGES", "add_to", "entries"]
